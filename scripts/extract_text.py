#!/usr/bin/env python3
"""Extracts plain UTF-8 text from the gensim test corpora (standard library only).

  lee.cor  -> lee.txt   lee.cor is Latin-1 (one 0xA3 pound sign makes it invalid UTF-8); one document per line,
                        kept as is, only re-encoded.
  enwiki-*.xml.bz2 -> wiki.txt
                        articles of the main namespace (redirects skipped); wiki markup removed; only paragraphs
                        of prose kept (one per line); articles separated by a blank line.

The wiki cleaning is deliberately simple (a stack scan for nested {{ }}, {| |} and [[ ]] plus a few regular
expressions): the output feeds perplexity measurements and calibration, where a stray fragment of markup is
harmless, but templates, references and tables would dominate the text if left in.

Usage: extract_text.py --lee LEE.cor --wiki ENWIKI.xml.bz2 --out DIR
"""

import argparse
import bz2
import html
import os
import re
import sys
import xml.etree.ElementTree as ET

# Link namespaces whose targets are not running text: the whole [[...]] goes.
DROP_LINK_PREFIXES = ("file:", "image:", "category:", "media:")
# Elements whose content is never prose (formulas, code, galleries, ...): dropped with their content.
DROP_ELEMENTS = ("ref", "math", "gallery", "timeline", "syntaxhighlight", "source", "pre", "score", "imagemap",
                 "chem", "hiero", "graph", "references", "nowiki", "code", "templatedata")


def strip_nested(text, open_tok, close_tok):
    """Removes every (possibly nested) span open_tok ... close_tok. Unbalanced openers are kept literally."""
    out = []
    depth = 0
    i = 0
    n = len(text)
    start_literal = 0
    while i < n:
        if text.startswith(open_tok, i):
            if depth == 0:
                out.append(text[start_literal:i])
            depth += 1
            i += len(open_tok)
        elif depth > 0 and text.startswith(close_tok, i):
            depth -= 1
            i += len(close_tok)
            if depth == 0:
                start_literal = i
        else:
            i += 1
    if depth == 0:
        out.append(text[start_literal:])
    return "".join(out)


def replace_links(text):
    """[[target|label]] -> label, [[target]] -> target; File:/Category:/... links (nested ones too) removed."""
    out = []
    i = 0
    n = len(text)
    while i < n:
        j = text.find("[[", i)
        if j < 0:
            out.append(text[i:])
            break
        out.append(text[i:j])
        # Find the matching ]] allowing nesting (image captions contain links).
        depth = 0
        k = j
        while k < n:
            if text.startswith("[[", k):
                depth += 1
                k += 2
            elif text.startswith("]]", k):
                depth -= 1
                k += 2
                if depth == 0:
                    break
            else:
                k += 1
        if depth != 0:
            out.append(text[j:])
            break
        inner = text[j + 2:k - 2]
        if inner.strip().lower().startswith(DROP_LINK_PREFIXES) or ("[[" in inner):
            pass  # a file/category link or a nested construct: not prose
        elif ":" in inner.split("|", 1)[0] and not inner.startswith(":"):
            # Interlanguage and other namespace links ([[fr:...]], [[wikt:word|word]]): keep the label if any.
            if "|" in inner:
                out.append(inner.split("|")[-1])
        else:
            out.append(inner.split("|")[-1].lstrip(":"))
        i = k
    return "".join(out)


RE_COMMENT = re.compile(r"<!--.*?-->", re.S)
RE_SELF_CLOSING = re.compile(r"<(%s)\b[^>]*/>" % "|".join(DROP_ELEMENTS), re.I)
RE_ELEMENT = re.compile(r"<(%s)\b[^>]*>.*?</\1\s*>" % "|".join(DROP_ELEMENTS), re.I | re.S)
RE_TAG = re.compile(r"</?[a-zA-Z][^>]*>")
RE_EXT_LINK_LABEL = re.compile(r"\[(?:https?:|ftp:)?//[^\s\]]+\s+([^\]]*)\]")
RE_EXT_LINK_BARE = re.compile(r"\[(?:https?:|ftp:)?//[^\]]*\]")
RE_BOLD_ITALIC = re.compile(r"'{2,5}")
RE_HEADING = re.compile(r"^=+.*=+\s*$")
RE_SPACES = re.compile(r"[ \t\u00a0]+")
RE_SPACE_BEFORE_PUNCT = re.compile(r" +([,.;:!?)])")
RE_EMPTY_PARENS = re.compile(r"\(\s*[,;]?\s*\)")


def clean_wikitext(text):
    """Returns the prose paragraphs of one article's wikitext."""
    text = html.unescape(text)  # the dump escapes markup once more inside <text>: &lt;ref&gt; etc.
    text = RE_COMMENT.sub("", text)
    text = RE_SELF_CLOSING.sub("", text)
    text = RE_ELEMENT.sub("", text)
    text = strip_nested(text, "{{", "}}")
    text = strip_nested(text, "{|", "|}")
    text = replace_links(text)
    text = RE_EXT_LINK_LABEL.sub(r"\1", text)
    text = RE_EXT_LINK_BARE.sub("", text)
    text = RE_TAG.sub("", text)
    text = RE_BOLD_ITALIC.sub("", text)
    text = text.replace("__NOTOC__", "").replace("__TOC__", "").replace("__NOEDITSECTION__", "")
    text = html.unescape(text)  # entities written in the wikitext itself (&nbsp;, &ndash;)

    paragraphs = []
    for line in text.split("\n"):
        line = line.strip()
        if not line or RE_HEADING.match(line):
            continue
        # Lists, indented quotes, definition lists and table/template remnants are not prose paragraphs.
        if line[0] in "*#:;|!{}[=<":
            continue
        if line.lower().startswith(("file:", "image:", "category:", "thumb|")):
            continue
        line = RE_SPACES.sub(" ", line)
        line = RE_EMPTY_PARENS.sub("", line)
        line = RE_SPACE_BEFORE_PUNCT.sub(r"\1", line)
        line = RE_SPACES.sub(" ", line).strip()
        # A paragraph of prose: several words and ends like a sentence.
        if len(line.split()) < 6 or line[-1] not in ".!?\"')":
            continue
        paragraphs.append(line)
    return paragraphs


def local(tag):
    return tag.rsplit("}", 1)[-1]


def extract_wiki(src, dst):
    articles = paragraphs = skipped = 0
    with bz2.open(src, "rb") as f, open(dst + ".part", "w", encoding="utf-8", newline="\n") as out:
        title = ns = None
        redirect = False
        for event, elem in ET.iterparse(f, events=("end",)):
            tag = local(elem.tag)
            if tag == "title":
                title = elem.text or ""
            elif tag == "ns":
                ns = (elem.text or "").strip()
            elif tag == "redirect":
                redirect = True
            elif tag == "text":
                body = elem.text or ""
                if ns != "0" or redirect or body.lstrip().upper().startswith("#REDIRECT"):
                    skipped += 1
                else:
                    paras = clean_wikitext(body)
                    if paras:
                        if articles:
                            out.write("\n")
                        out.write("\n".join(paras))
                        out.write("\n")
                        articles += 1
                        paragraphs += len(paras)
                    else:
                        skipped += 1
            elif tag == "page":
                title, ns, redirect = None, None, False
                elem.clear()  # keep memory flat while streaming
    os.replace(dst + ".part", dst)
    return articles, paragraphs, skipped


def extract_lee(src, dst):
    with open(src, "rb") as f:
        raw = f.read()
    # Latin-1 maps every byte to the code point of the same value, so this decoding cannot fail and is exact.
    text = raw.decode("latin-1").replace("\r\n", "\n")
    with open(dst + ".part", "w", encoding="utf-8", newline="\n") as out:
        out.write(text if text.endswith("\n") else text + "\n")
    os.replace(dst + ".part", dst)
    non_ascii = sum(1 for b in raw if b >= 0x80)
    return text.count("\n") + (0 if text.endswith("\n") else 1), non_ascii


def describe(path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return "%d bytes, %d lines, %d words" % (len(text.encode("utf-8")), text.count("\n"), len(text.split()))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lee", required=True)
    ap.add_argument("--wiki", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    lee_txt = os.path.join(args.out, "lee.txt")
    docs, non_ascii = extract_lee(args.lee, lee_txt)
    print("extract_text: %s -> %s: %d documents, %d non-ASCII Latin-1 bytes re-encoded; %s"
          % (args.lee, lee_txt, docs, non_ascii, describe(lee_txt)))

    wiki_txt = os.path.join(args.out, "wiki.txt")
    articles, paragraphs, skipped = extract_wiki(args.wiki, wiki_txt)
    print("extract_text: %s -> %s: %d articles, %d prose paragraphs (%d pages skipped: redirects, other "
          "namespaces, no prose); %s" % (args.wiki, wiki_txt, articles, paragraphs, skipped, describe(wiki_txt)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
