/*
 * misuse.c: every way of misusing the C API that tern can detect gets its error code and a message naming
 * the function, never a crash; a few positive checks pin down the behaviour around them. Built and run by
 * scripts/test-capi.sh, plain and under -fsanitize=address,undefined.
 *
 *   misuse TINY.tern      (a model with a byte-level tokenizer: `tern quantize --tiny-random 7 --method ptq`)
 *
 * Prints one line per check and "N passed, M failed"; exits non-zero if any failed.
 */
#include <tern.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int passed, failed;

/* Checks `status == want` and that the message names `function`. */
static void expect(const char *what, tern_status status, tern_status want, const char *function) {
  const char *msg = tern_last_error_message();
  int ok = status == want && (want == TERN_OK || strncmp(msg, function, strlen(function)) == 0);
  printf("%s %s: got %d (%s)%s%s\n", ok ? "ok  " : "FAIL", what, status, tern_status_string(status),
         want == TERN_OK ? "" : ", ", want == TERN_OK ? "" : msg);
  if (!ok) printf("     wanted %d (%s) from %s\n", want, tern_status_string(want), function);
  ok ? passed++ : failed++;
}

static void check(const char *what, int condition) {
  printf("%s %s\n", condition ? "ok  " : "FAIL", what);
  condition ? passed++ : failed++;
}

/* The file's bytes in a 64-byte aligned buffer (with room for a misaligned copy). */
static unsigned char *read_file(const char *path, size_t *size) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  *size = (size_t)ftell(f);
  fseek(f, 0, SEEK_SET);
  unsigned char *buf = aligned_alloc(64, (*size + 64 + 63) / 64 * 64);
  if (buf && fread(buf, 1, *size, f) != *size) {
    free(buf);
    buf = NULL;
  }
  fclose(f);
  return buf;
}

static int32_t count_tokens(void *user, uint32_t token, const char *text, size_t len) {
  (void)token, (void)text, (void)len;
  ++*(int *)user;
  return 0;
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s TINY.tern\n", argv[0]);
    return 2;
  }
  size_t size = 0;
  unsigned char *bytes = read_file(argv[1], &size);
  if (!bytes) {
    fprintf(stderr, "cannot read %s\n", argv[1]);
    return 2;
  }
  printf("tern %s\n", tern_version());
  check("no error message before any failure", strcmp(tern_last_error_message(), "") == 0);

  /* --- Opening: NULLs, missing files, buffers that are not (whole) models. */
  tern_model *model = (tern_model *)0x1;
  expect("open with a NULL path", tern_model_open(NULL, 0, &model), TERN_ERR_NULL_POINTER, "tern_model_open");
  check("  and *out_model is set to NULL", model == NULL);
  expect("open with a NULL out pointer", tern_model_open(argv[1], 0, NULL), TERN_ERR_NULL_POINTER, "tern_model_open");
  expect("open a missing file", tern_model_open("/nonexistent/model.tern", 0, &model), TERN_ERR_IO, "tern_model_open");
  expect("open with unknown flags", tern_model_open(argv[1], 0x80, &model), TERN_ERR_INVALID_ARGUMENT, "tern_model_open");
  expect("open_buffer with NULL data", tern_model_open_buffer(NULL, 100, 0, &model), TERN_ERR_NULL_POINTER,
         "tern_model_open_buffer");
  static const char not_a_model[64] = "this is a text file, not a model";
  expect("open a buffer that is not a model", tern_model_open_buffer(not_a_model, sizeof not_a_model, 0, &model),
         TERN_ERR_INVALID_MODEL, "tern_model_open_buffer");
  expect("open an empty buffer", tern_model_open_buffer(bytes, 0, 0, &model), TERN_ERR_INVALID_MODEL,
         "tern_model_open_buffer");
  expect("open a truncated model (half the file)", tern_model_open_buffer(bytes, size / 2, 0, &model),
         TERN_ERR_INVALID_MODEL, "tern_model_open_buffer");
  expect("open a truncated model (one byte short)", tern_model_open_buffer(bytes, size - 1, 0, &model),
         TERN_ERR_INVALID_MODEL, "tern_model_open_buffer");
  unsigned char *shifted = malloc(size + 1);
  memcpy(shifted + 1, bytes, size);
  expect("open a misaligned buffer", tern_model_open_buffer(shifted + 1, size, 0, &model), TERN_ERR_MISALIGNED,
         "tern_model_open_buffer");
  free(shifted);
  /* Flip one byte of the last tensor's data: the structure still parses, its checksum does not match. */
  unsigned char *corrupt = aligned_alloc(64, (size + 63) / 64 * 64);
  memcpy(corrupt, bytes, size);
  corrupt[size - 100] ^= 0x55;
  expect("open a corrupt model with TERN_OPEN_VERIFY_CHECKSUMS",
         tern_model_open_buffer(corrupt, size, TERN_OPEN_VERIFY_CHECKSUMS, &model), TERN_ERR_INVALID_MODEL,
         "tern_model_open_buffer");
  check("  the message says what is wrong", strstr(tern_last_error_message(), "checksum") != NULL);
  expect("open it without TERN_OPEN_VERIFY_CHECKSUMS (structure only)",
         tern_model_open_buffer(corrupt, size, 0, &model), TERN_OK, "");
  tern_model_free(model);
  free(corrupt);

  expect("open the model from memory", tern_model_open_buffer(bytes, size, TERN_OPEN_VERIFY_CHECKSUMS, &model),
         TERN_OK, "tern_model_open_buffer");
  tern_model_config config;
  expect("get_config", tern_model_get_config(model, &config), TERN_OK, "");
  expect("get_config with a NULL model", tern_model_get_config(NULL, &config), TERN_ERR_NULL_POINTER,
         "tern_model_get_config");
  expect("get_config with a NULL output", tern_model_get_config(model, NULL), TERN_ERR_NULL_POINTER,
         "tern_model_get_config");
  const uint32_t vocab = config.vocab_size, ctx = 16;

  /* --- Tokenizer. */
  uint32_t ids[64];
  size_t n = 0;
  expect("tokenize \"Hi!\"", tern_tokenize(model, "Hi!", 3, 0, ids, 64, &n), TERN_OK, "");
  check("  gives the byte ids 72 105 33", n == 3 && ids[0] == 72 && ids[1] == 105 && ids[2] == 33);
  expect("tokenize into a buffer that is too small", tern_tokenize(model, "Hello", 5, 0, ids, 2, &n),
         TERN_ERR_BUFFER_TOO_SMALL, "tern_tokenize");
  check("  reports the count needed", n == 5);
  expect("tokenize text that is not UTF-8", tern_tokenize(model, "\xff\xfe", 2, 0, ids, 64, &n),
         TERN_ERR_INVALID_ARGUMENT, "tern_tokenize");
  expect("tokenize NULL text of length 3", tern_tokenize(model, NULL, 3, 0, ids, 64, &n), TERN_ERR_NULL_POINTER,
         "tern_tokenize");
  expect("tokenize with a NULL model", tern_tokenize(NULL, "a", 1, 0, ids, 64, &n), TERN_ERR_NULL_POINTER,
         "tern_tokenize");
  char text[16];
  size_t len = 0;
  uint32_t hi[2] = {72, 105};
  expect("detokenize 72 105", tern_detokenize(model, hi, 2, text, sizeof text, &len), TERN_OK, "");
  check("  gives \"Hi\"", len == 2 && strcmp(text, "Hi") == 0);
  expect("detokenize into a buffer without room for the NUL", tern_detokenize(model, hi, 2, text, 2, &len),
         TERN_ERR_BUFFER_TOO_SMALL, "tern_detokenize");
  uint32_t bad_id = vocab + 5;
  expect("detokenize an id outside the vocabulary", tern_detokenize(model, &bad_id, 1, text, sizeof text, &len),
         TERN_ERR_TOKEN_OUT_OF_RANGE, "tern_detokenize");

  /* --- Sessions: options, arenas. */
  tern_session_options options = {.max_context = ctx, .max_batch = 4};
  size_t arena_size = 0;
  expect("arena_size", tern_model_arena_size(model, &options, &arena_size), TERN_OK, "");
  tern_session_options too_long = {.max_context = config.context_length + 1};
  expect("arena_size with max_context past the model's", tern_model_arena_size(model, &too_long, &arena_size),
         TERN_ERR_INVALID_ARGUMENT, "tern_model_arena_size");
  tern_session_options bad_kv = {.kv_precision = 7};
  expect("arena_size with an unknown kv_precision", tern_model_arena_size(model, &bad_kv, &arena_size),
         TERN_ERR_INVALID_ARGUMENT, "tern_model_arena_size");
  expect("arena_size again", tern_model_arena_size(model, &options, &arena_size), TERN_OK, "");
  unsigned char *arena = malloc(arena_size);
  tern_session *session = (tern_session *)0x1;
  expect("session in an arena one byte too small",
         tern_session_new_in_arena(model, &options, arena, arena_size - 1, &session), TERN_ERR_ARENA_TOO_SMALL,
         "tern_session_new_in_arena");
  check("  and *out_session is set to NULL", session == NULL);
  expect("session in a NULL arena", tern_session_new_in_arena(model, &options, NULL, arena_size, &session),
         TERN_ERR_NULL_POINTER, "tern_session_new_in_arena");
  expect("session of a NULL model", tern_session_new(NULL, &options, &session), TERN_ERR_NULL_POINTER,
         "tern_session_new");
  expect("session in the caller's arena", tern_session_new_in_arena(model, &options, arena, arena_size, &session),
         TERN_OK, "");

  /* --- Inputs: token ids, lengths, logits, sampling. */
  float *logits = malloc(vocab * sizeof *logits);
  tern_sampler sampler;
  tern_sampling_params params = tern_sampling_params_default();
  expect("sampler_init", tern_sampler_init(&sampler, &params), TERN_OK, "");
  uint32_t token = 0;
  expect("logits before any token", tern_session_get_logits(session, logits, vocab), TERN_ERR_NO_LOGITS,
         "tern_session_get_logits");
  expect("sample before any token", tern_session_sample(session, &sampler, &token), TERN_ERR_NO_LOGITS,
         "tern_session_sample");
  uint32_t with_bad[3] = {1, vocab, 2};
  expect("feed a token id equal to the vocabulary size", tern_session_feed(session, with_bad, 3),
         TERN_ERR_TOKEN_OUT_OF_RANGE, "tern_session_feed");
  uint32_t huge = 0xFFFFFFFFu;
  expect("feed token id 0xFFFFFFFF", tern_session_feed(session, &huge, 1), TERN_ERR_TOKEN_OUT_OF_RANGE,
         "tern_session_feed");
  uint32_t long_prompt[17];
  for (int i = 0; i < 17; i++) long_prompt[i] = (uint32_t)(65 + i);
  expect("feed a prompt longer than the context", tern_session_feed(session, long_prompt, ctx + 1),
         TERN_ERR_CONTEXT_FULL, "tern_session_feed");
  tern_generate_params gen = {.max_tokens = 4};
  expect("generate from a prompt longer than the context",
         tern_session_generate(session, long_prompt, ctx + 1, &gen, &sampler, NULL, NULL, NULL),
         TERN_ERR_CONTEXT_FULL, "tern_session_generate");
  size_t pos = 99;
  expect("position", tern_session_position(session, &pos), TERN_OK, "");
  check("  rejected inputs left the session at position 0", pos == 0);
  expect("feed NULL tokens of length 2", tern_session_feed(session, NULL, 2), TERN_ERR_NULL_POINTER,
         "tern_session_feed");
  expect("feed no tokens", tern_session_feed(session, long_prompt, 0), TERN_ERR_INVALID_ARGUMENT,
         "tern_session_feed");
  expect("feed to a NULL session", tern_session_feed(NULL, long_prompt, 1), TERN_ERR_NULL_POINTER,
         "tern_session_feed");
  expect("feed the whole context", tern_session_feed(session, long_prompt, ctx), TERN_OK, "");
  expect("feed one more token", tern_session_feed(session, long_prompt, 1), TERN_ERR_CONTEXT_FULL,
         "tern_session_feed");
  expect("logits into a buffer that is too small", tern_session_get_logits(session, logits, vocab - 1),
         TERN_ERR_BUFFER_TOO_SMALL, "tern_session_get_logits");
  expect("logits", tern_session_get_logits(session, logits, vocab), TERN_OK, "");
  int finite = 1;
  for (uint32_t i = 0; i < vocab; i++) finite &= isfinite(logits[i]) != 0;
  check("  are finite", finite);
  tern_sampler bad_sampler = sampler;
  bad_sampler.params.temperature = NAN;
  expect("sample with a NaN temperature", tern_session_sample(session, &bad_sampler, &token),
         TERN_ERR_INVALID_ARGUMENT, "tern_session_sample");
  bad_sampler = sampler;
  bad_sampler.params.repeat_penalty = 0.0f;
  expect("sample with repeat_penalty 0", tern_session_sample(session, &bad_sampler, &token),
         TERN_ERR_INVALID_ARGUMENT, "tern_session_sample");
  expect("sampler_init with a NaN top_p",
         tern_sampler_init(&bad_sampler, &(tern_sampling_params){.top_p = NAN, .repeat_penalty = 1}),
         TERN_ERR_INVALID_ARGUMENT, "tern_sampler_init");
  expect("sample", tern_session_sample(session, &sampler, &token), TERN_OK, "");
  check("  gives a token inside the vocabulary", token < vocab);
  int generated = 0;
  tern_generate_result result;
  expect("generate with a full context",
         tern_session_generate(session, NULL, 0, &gen, &sampler, count_tokens, &generated, &result), TERN_OK, "");
  check("  stops at once: context full", result.stop_reason == TERN_STOP_CONTEXT_FULL && generated == 0);
  expect("set_threads 0", tern_session_set_threads(session, 0), TERN_ERR_INVALID_ARGUMENT,
         "tern_session_set_threads");
  expect("truncate to 4", tern_session_truncate(session, 4), TERN_OK, "");
  expect("logits after truncate", tern_session_get_logits(session, logits, vocab), TERN_ERR_NO_LOGITS,
         "tern_session_get_logits");
  expect("generate 4 tokens", tern_session_generate(session, long_prompt + 4, 1, &gen, &sampler, count_tokens,
                                                    &generated, &result),
         TERN_OK, "");
  expect("position", tern_session_position(session, &pos), TERN_OK, "");
  check("  is 4 + 1 + 4 (every generated token fed)", pos == 9 && generated == 4 && result.n_tokens == 4);

  /* --- A session whose model was freed. */
  tern_session *orphan = NULL;
  expect("a tern-allocated session", tern_session_new(model, NULL, &orphan), TERN_OK, "");
  expect("feed it", tern_session_feed(orphan, long_prompt, 3), TERN_OK, "");
  tern_model_free(model);
  expect("feed after its model was freed", tern_session_feed(orphan, long_prompt, 1), TERN_ERR_MODEL_FREED,
         "tern_session_feed");
  expect("logits after its model was freed", tern_session_get_logits(orphan, logits, vocab),
         TERN_ERR_MODEL_FREED, "tern_session_get_logits");
  expect("sample after its model was freed", tern_session_sample(session, &sampler, &token), TERN_ERR_MODEL_FREED,
         "tern_session_sample");
  expect("generate after its model was freed",
         tern_session_generate(session, NULL, 0, &gen, &sampler, NULL, NULL, NULL), TERN_ERR_MODEL_FREED,
         "tern_session_generate");
  /* The model's bytes may go now: the sessions never read them again. */
  memset(bytes, 0xEE, size);
  free(bytes);
  expect("reset after its model was freed", tern_session_reset(orphan), TERN_ERR_MODEL_FREED,
         "tern_session_reset");
  tern_session_free(orphan);
  tern_session_free(session);
  free(arena);
  tern_session_free(NULL);
  tern_model_free(NULL);
  check("freeing NULL handles is a no-op", 1);
  check("tern_status_string of an unknown code", strcmp(tern_status_string(12345), "unknown status") == 0);

  free(logits);
  printf("%d passed, %d failed\n", passed, failed);
  return failed != 0;
}
