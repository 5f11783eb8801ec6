//! `ModelView`: a validated, zero-copy view of a .tern file's bytes.

use crate::config::ModelConfig;
use crate::dtype::tensor_bytes;
use crate::error::FormatError;
use crate::layout::{
    section, tokenizer_kind, ALIGN, HEADER_BYTES, MAGIC, MAX_SECTIONS, MAX_TENSORS, SECTION_ENTRY_BYTES,
    TENSOR_ENTRY_BYTES, VERSION,
};
use crate::le::Reader;
use crate::tensor::{RawEntry, Role, TensorView};

/// What `ModelView::parse_with` checks beyond structure (structure is always checked).
#[derive(Clone, Copy, Debug)]
pub struct ParseOptions {
    /// CRC32 of every tensor's bytes (reads the whole file; a 2 GB model costs ~0.2 s).
    pub verify_tensor_checksums: bool,
}

impl Default for ParseOptions {
    fn default() -> Self {
        Self {
            verify_tensor_checksums: true,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Span {
    offset: usize,
    len: usize,
}

/// Embedded tokenizer payload.
#[derive(Clone, Copy, Debug)]
pub struct TokenizerData<'a> {
    /// `layout::tokenizer_kind::*`.
    pub kind: u32,
    pub bytes: &'a [u8],
}

/// A parsed .tern file borrowing its bytes. Cheap to copy.
#[derive(Clone, Copy, Debug)]
pub struct ModelView<'a> {
    bytes: &'a [u8],
    config: ModelConfig,
    metadata: Option<Span>,
    tokenizer: Option<Span>,
    chat_template: Option<&'a str>,
    directory: &'a [u8],
    strings: &'a [u8],
    tensor_count: u32,
}

/// Where a validated view's parts lie in its bytes, borrowing nothing: an owner of the bytes keeps this and
/// rebuilds the view with `ModelView::from_layout` instead of parsing (and checksumming) the file again.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ViewLayout {
    len: usize,
    config: ModelConfig,
    metadata: Option<Span>,
    tokenizer: Option<Span>,
    chat_template: Option<Span>,
    directory: Span,
    strings: Span,
    tensor_count: u32,
}

fn crc32(parts: &[&[u8]]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    for p in parts {
        h.update(p);
    }
    h.finalize()
}

impl<'a> ModelView<'a> {
    /// Parses and validates everything, including tensor checksums.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, FormatError> {
        Self::parse_with(bytes, ParseOptions::default())
    }

    pub fn parse_with(bytes: &'a [u8], opts: ParseOptions) -> Result<Self, FormatError> {
        if cfg!(target_endian = "big") {
            return Err(FormatError::BigEndianHost);
        }
        if bytes.len() < HEADER_BYTES {
            return if bytes.len() >= 8 && bytes[..8] != MAGIC {
                Err(FormatError::BadMagic)
            } else {
                Err(FormatError::Truncated)
            };
        }
        let mut r = Reader::new(bytes);
        if r.take(8)? != MAGIC {
            return Err(FormatError::BadMagic);
        }
        let version = r.u32()?;
        if version != VERSION {
            return Err(FormatError::UnsupportedVersion(version));
        }
        if bytes.as_ptr() as usize % 4 != 0 {
            return Err(FormatError::Misaligned);
        }
        if r.u32()? as usize != HEADER_BYTES {
            return Err(FormatError::BadHeader("header size field is not 64"));
        }
        let file_bytes = r.u64()?;
        if file_bytes != bytes.len() as u64 {
            return Err(FormatError::FileSizeMismatch {
                recorded: file_bytes,
                actual: bytes.len() as u64,
            });
        }
        let section_count = r.u32()?;
        if r.u32()? != 0 {
            return Err(FormatError::BadHeader("reserved field is not zero"));
        }
        let table_offset = r.u64()?;
        let header_crc = r.u32()?;
        if section_count == 0 || section_count > MAX_SECTIONS {
            return Err(FormatError::BadHeader("section count must be 1 to 64"));
        }
        if table_offset != HEADER_BYTES as u64 {
            return Err(FormatError::BadHeader("section table must follow the header"));
        }
        if bytes[44..HEADER_BYTES].iter().any(|&b| b != 0) {
            return Err(FormatError::BadHeader("reserved header bytes are not zero"));
        }
        let table_len = section_count as usize * SECTION_ENTRY_BYTES;
        let table = bytes
            .get(HEADER_BYTES..HEADER_BYTES + table_len)
            .ok_or(FormatError::Truncated)?;
        if crc32(&[&bytes[..40], table]) != header_crc {
            return Err(FormatError::HeaderChecksum);
        }

        // Sections: in bounds, after the table, aligned, pairwise disjoint, each kind at most once.
        let mut spans: [(u32, Span); MAX_SECTIONS as usize] = [(0, Span::default()); MAX_SECTIONS as usize];
        let mut tr = Reader::new(table);
        let min_offset = HEADER_BYTES + table_len;
        let mut data_start = min_offset;
        for i in 0..section_count as usize {
            let kind = tr.u32()?;
            let crc = tr.u32()?;
            let offset = tr.u64()?;
            let len = tr.u64()?;
            let end = offset
                .checked_add(len)
                .ok_or(FormatError::SectionOutOfBounds { kind })?;
            if offset < min_offset as u64 || end > bytes.len() as u64 || offset as usize % ALIGN != 0 {
                return Err(FormatError::SectionOutOfBounds { kind });
            }
            let span = Span {
                offset: offset as usize,
                len: len as usize,
            };
            for &(k, s) in &spans[..i] {
                if k == kind {
                    return Err(FormatError::DuplicateSection { kind });
                }
                if span.offset < s.offset + s.len && s.offset < span.offset + span.len {
                    return Err(FormatError::SectionOverlap { kind });
                }
            }
            if crc32(&[&bytes[span.offset..span.offset + span.len]]) != crc {
                return Err(FormatError::SectionChecksum { kind });
            }
            data_start = data_start.max(span.offset + span.len);
            spans[i] = (kind, span);
        }
        let find = |kind: u32| {
            spans[..section_count as usize]
                .iter()
                .find(|s| s.0 == kind)
                .map(|s| s.1)
        };
        let slice = |s: Span| &bytes[s.offset..s.offset + s.len];
        let required = |kind: u32| find(kind).ok_or(FormatError::MissingSection { kind });

        let config = ModelConfig::decode(slice(required(section::CONFIG)?))?;
        let metadata = find(section::METADATA);
        if let Some(m) = metadata {
            // Walk every entry once so later iteration cannot fail.
            for item in MetadataIter::new(slice(m))? {
                item?;
            }
        }
        let tokenizer = find(section::TOKENIZER);
        if let Some(t) = tokenizer {
            let b = slice(t);
            let kind = Reader::new(b)
                .u32()
                .map_err(|_| FormatError::BadTokenizer("section shorter than its kind field"))?;
            if kind != tokenizer_kind::HF_JSON {
                return Err(FormatError::BadTokenizer("unknown tokenizer kind"));
            }
            if core::str::from_utf8(&b[4..]).is_err() {
                return Err(FormatError::BadTokenizer("tokenizer.json is not UTF-8"));
            }
        }
        let chat_template = match find(section::CHAT_TEMPLATE) {
            Some(s) => Some(
                core::str::from_utf8(slice(s)).map_err(|_| FormatError::BadMetadata("chat template is not UTF-8"))?,
            ),
            None => None,
        };
        let dir = slice(required(section::TENSORS)?);
        let strings = slice(required(section::STRINGS)?);
        let mut dr = Reader::new(dir);
        let count = dr.u32()? as u64;
        let reserved = dr.u32()?;
        if count > MAX_TENSORS {
            return Err(FormatError::TooManyTensors(count));
        }
        if reserved != 0 || dr.remaining() as u64 != count * TENSOR_ENTRY_BYTES as u64 {
            return Err(FormatError::BadHeader(
                "tensor directory length does not match its count",
            ));
        }
        let view = ModelView {
            bytes,
            config,
            metadata,
            tokenizer,
            chat_template,
            directory: &dir[8..],
            strings,
            tensor_count: count as u32,
        };

        // Tensors: data regions in directory order, aligned, after all sections, disjoint, in bounds.
        let mut cursor = data_start as u64;
        for index in 0..view.tensor_count {
            let e = view.raw_entry(index)?;
            let bad = |what| FormatError::BadTensor { index, what };
            let (data_len, scales_len) = tensor_bytes(e.dtype, e.scale, &e.shape).map_err(|err| match err {
                FormatError::ScaleMismatch => bad("element type does not accept this scale granularity"),
                _ => bad("tensor size overflows"),
            })?;
            if data_len != e.data_len || scales_len != e.scales_len {
                return Err(bad("stored length does not match type and shape"));
            }
            if e.data_offset % ALIGN as u64 != 0 || (scales_len > 0 && e.scales_offset % ALIGN as u64 != 0) {
                return Err(bad("data is not 64-byte aligned"));
            }
            if e.data_offset < cursor {
                return Err(bad("data overlaps the previous tensor or a section"));
            }
            let data_end = e.data_offset.checked_add(data_len).ok_or(bad("data range overflows"))?;
            cursor = data_end;
            if scales_len > 0 {
                if e.scales_offset < cursor {
                    return Err(bad("scales overlap the data"));
                }
                cursor = e
                    .scales_offset
                    .checked_add(scales_len)
                    .ok_or(bad("scale range overflows"))?;
            } else if e.scales_offset != 0 {
                return Err(bad("unscaled tensor has a scale offset"));
            }
            if cursor > bytes.len() as u64 {
                return Err(bad("data lies past the end of the file"));
            }
            let t = view.resolve(index, &e)?;
            for earlier in view.tensors().take(index as usize) {
                if earlier.name == t.name {
                    return Err(FormatError::DuplicateTensorName { index });
                }
            }
            if opts.verify_tensor_checksums && crc32(&[t.data, bytemuck::cast_slice(t.scales)]) != t.crc32 {
                return Err(FormatError::TensorChecksum { index });
            }
        }
        Ok(view)
    }

    /// Where this view's parts are, for `from_layout`.
    pub fn layout(&self) -> ViewLayout {
        let base = self.bytes.as_ptr() as usize;
        let span = |s: &[u8]| Span {
            offset: s.as_ptr() as usize - base,
            len: s.len(),
        };
        ViewLayout {
            len: self.bytes.len(),
            config: self.config,
            metadata: self.metadata,
            tokenizer: self.tokenizer,
            chat_template: self.chat_template.map(|t| span(t.as_bytes())),
            directory: span(self.directory),
            strings: span(self.strings),
            tensor_count: self.tensor_count,
        }
    }

    /// Rebuilds, over `bytes`, the view `layout` was taken from: the same file's bytes, possibly at another
    /// address. O(1) apart from re-checking the chat template's UTF-8: the length, alignment and every span
    /// are checked (so bytes that changed cannot make a view index out of range, and tensor lookups stay
    /// checked), but not the contents — `parse_with` is for bytes not validated before.
    pub fn from_layout(bytes: &'a [u8], layout: &ViewLayout) -> Result<Self, FormatError> {
        if bytes.len() != layout.len {
            return Err(FormatError::FileSizeMismatch {
                recorded: layout.len as u64,
                actual: bytes.len() as u64,
            });
        }
        if bytes.as_ptr() as usize % 4 != 0 {
            return Err(FormatError::Misaligned);
        }
        let slice = |s: Span| {
            s.offset
                .checked_add(s.len)
                .and_then(|end| bytes.get(s.offset..end))
                .ok_or(FormatError::Truncated)
        };
        for s in [layout.metadata, layout.tokenizer].into_iter().flatten() {
            slice(s)?;
        }
        let chat_template = match layout.chat_template {
            Some(s) => Some(
                core::str::from_utf8(slice(s)?).map_err(|_| FormatError::BadMetadata("chat template is not UTF-8"))?,
            ),
            None => None,
        };
        let directory = slice(layout.directory)?;
        if directory.len() as u64 != u64::from(layout.tensor_count) * TENSOR_ENTRY_BYTES as u64 {
            return Err(FormatError::Truncated);
        }
        Ok(ModelView {
            bytes,
            config: layout.config,
            metadata: layout.metadata,
            tokenizer: layout.tokenizer,
            chat_template,
            directory,
            strings: slice(layout.strings)?,
            tensor_count: layout.tensor_count,
        })
    }

    fn raw_entry(&self, index: u32) -> Result<RawEntry, FormatError> {
        let past = FormatError::BadTensor {
            index,
            what: "index past the directory",
        };
        let start = usize::try_from(index)
            .ok()
            .and_then(|i| i.checked_mul(TENSOR_ENTRY_BYTES))
            .ok_or(past)?;
        let end = start.checked_add(TENSOR_ENTRY_BYTES).ok_or(past)?;
        let b = self.directory.get(start..end).ok_or(past)?;
        RawEntry::decode(b, index)
    }

    fn resolve(&self, index: u32, e: &RawEntry) -> Result<TensorView<'a>, FormatError> {
        let bad = |what| FormatError::BadTensor { index, what };
        // Offset and length are file-derived u32s: their sum can exceed a 32-bit target's usize.
        let outside = bad("name lies outside the string table");
        let name_start = usize::try_from(e.name_offset).map_err(|_| outside)?;
        let name_end = usize::try_from(e.name_len)
            .ok()
            .and_then(|len| name_start.checked_add(len))
            .ok_or(outside)?;
        let name = self.strings.get(name_start..name_end).ok_or(outside)?;
        let name = core::str::from_utf8(name).map_err(|_| bad("name is not UTF-8"))?;
        if name.is_empty() {
            return Err(bad("empty name"));
        }
        let range = |off: u64, len: u64| -> Result<&'a [u8], FormatError> {
            let end = off.checked_add(len).ok_or(bad("range overflows"))?;
            let (start, end) = match (usize::try_from(off), usize::try_from(end)) {
                (Ok(s), Ok(e)) => (s, e),
                _ => return Err(bad("range lies past the end of the file")),
            };
            self.bytes
                .get(start..end)
                .ok_or(bad("range lies past the end of the file"))
        };
        let data = range(e.data_offset, e.data_len)?;
        let scales_bytes = range(if e.scales_len == 0 { 0 } else { e.scales_offset }, e.scales_len)?;
        let scales: &[f32] = bytemuck::try_cast_slice(scales_bytes).map_err(|_| FormatError::Misaligned)?;
        Ok(TensorView {
            index,
            name,
            role: e.role,
            layer: e.layer,
            dtype: e.dtype,
            scale: e.scale,
            shape: e.shape,
            data,
            scales,
            data_offset: e.data_offset,
            crc32: e.crc32,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }
    pub fn file_bytes(&self) -> &'a [u8] {
        self.bytes
    }
    pub fn tensor_count(&self) -> usize {
        self.tensor_count as usize
    }
    /// The `index`-th tensor in directory (= file) order.
    pub fn tensor(&self, index: usize) -> Option<TensorView<'a>> {
        let index = u32::try_from(index).ok()?;
        if index >= self.tensor_count {
            return None;
        }
        // Entries were validated by `parse_with`; decoding again cannot fail.
        let e = self.raw_entry(index).ok()?;
        self.resolve(index, &e).ok()
    }
    pub fn tensors(&self) -> impl Iterator<Item = TensorView<'a>> + '_ {
        (0..self.tensor_count()).filter_map(move |i| self.tensor(i))
    }
    pub fn find(&self, name: &str) -> Option<TensorView<'a>> {
        self.tensors().find(|t| t.name == name)
    }
    /// The tensor with this role (and block index, for per-block roles).
    pub fn find_role(&self, role: Role, layer: Option<u32>) -> Option<TensorView<'a>> {
        self.tensors().find(|t| t.role == role && t.layer == layer)
    }
    pub fn metadata(&self) -> MetadataIter<'a> {
        match self.metadata {
            Some(s) => {
                MetadataIter::new(&self.bytes[s.offset..s.offset + s.len]).unwrap_or_else(|_| MetadataIter::empty())
            }
            None => MetadataIter::empty(),
        }
    }
    pub fn metadata_value(&self, key: &str) -> Option<&'a str> {
        self.metadata()
            .filter_map(Result::ok)
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }
    pub fn tokenizer(&self) -> Option<TokenizerData<'a>> {
        let s = self.tokenizer?;
        let b = &self.bytes[s.offset..s.offset + s.len];
        Some(TokenizerData {
            kind: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            bytes: &b[4..],
        })
    }
    pub fn chat_template(&self) -> Option<&'a str> {
        self.chat_template
    }
}

/// Iterator over `(key, value)` metadata pairs.
pub struct MetadataIter<'a> {
    r: Reader<'a>,
    left: u32,
}

impl<'a> MetadataIter<'a> {
    fn new(bytes: &'a [u8]) -> Result<Self, FormatError> {
        let mut r = Reader::new(bytes);
        let left = r
            .u32()
            .map_err(|_| FormatError::BadMetadata("section shorter than its count"))?;
        Ok(Self { r, left })
    }
    fn empty() -> Self {
        Self {
            r: Reader::new(&[]),
            left: 0,
        }
    }
    fn string(&mut self) -> Result<&'a str, FormatError> {
        let len = self.r.u32().map_err(|_| FormatError::BadMetadata("entry truncated"))?;
        let b = self
            .r
            .take(len as usize)
            .map_err(|_| FormatError::BadMetadata("entry truncated"))?;
        core::str::from_utf8(b).map_err(|_| FormatError::BadMetadata("string is not UTF-8"))
    }
}

impl<'a> Iterator for MetadataIter<'a> {
    type Item = Result<(&'a str, &'a str), FormatError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let item = self.string().and_then(|k| Ok((k, self.string()?)));
        if item.is_err() {
            self.left = 0;
        }
        Some(item)
    }
}
