/*
 * generate.c: continue a prompt with a tern model, streaming the text as it is produced, then report the
 * prompt and generation speed.
 *
 *   generate MODEL.tern "PROMPT" [N_PREDICT [THREADS [TEMPERATURE]]]
 *
 * Build (after runtime/capi/install.sh):  cc generate.c $(pkg-config --cflags --libs tern-static) -o generate
 */
#define _POSIX_C_SOURCE 200809L /* clock_gettime */
#include <tern.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_seconds(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int fail(const char *what, tern_status status) {
  fprintf(stderr, "generate: %s failed (%s): %s\n", what, tern_status_string(status), tern_last_error_message());
  return 1;
}

/* Called by tern for every generated token: print its text as soon as it is complete. */
static int32_t print_piece(void *user_data, uint32_t token, const char *text, size_t text_len) {
  (void)token;
  size_t *bytes = user_data;
  fwrite(text, 1, text_len, stdout);
  fflush(stdout);
  *bytes += text_len;
  return 0; /* continue */
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: %s MODEL.tern PROMPT [N_PREDICT [THREADS [TEMPERATURE]]]\n", argv[0]);
    return 2;
  }
  const char *path = argv[1];
  const char *prompt = argv[2];
  uint32_t n_predict = argc > 3 ? (uint32_t)strtoul(argv[3], NULL, 10) : 64;
  uint32_t threads = argc > 4 ? (uint32_t)strtoul(argv[4], NULL, 10) : 1;
  float temperature = argc > 5 ? strtof(argv[5], NULL) : 0.8f;

  tern_model *model = NULL;
  tern_status st = tern_model_open(path, 0, &model);
  if (st != TERN_OK) return fail("tern_model_open", st);
  tern_model_config config;
  st = tern_model_get_config(model, &config);
  if (st != TERN_OK) return fail("tern_model_get_config", st);

  /* Tokenize: ask for the count first, then fill a buffer of that size. */
  size_t n_prompt = 0;
  st = tern_tokenize(model, prompt, strlen(prompt), TERN_TOKENIZE_PROMPT, NULL, 0, &n_prompt);
  if (st != TERN_OK && st != TERN_ERR_BUFFER_TOO_SMALL) return fail("tern_tokenize", st);
  uint32_t *tokens = malloc((n_prompt ? n_prompt : 1) * sizeof *tokens);
  st = tern_tokenize(model, prompt, strlen(prompt), TERN_TOKENIZE_PROMPT, tokens, n_prompt, &n_prompt);
  if (st != TERN_OK) return fail("tern_tokenize", st);

  /* A session just large enough for the prompt and the reply. */
  size_t context = n_prompt + n_predict;
  if (context > config.context_length) context = config.context_length;
  tern_session_options options = {0};
  options.max_context = (uint32_t)context;
  options.threads = threads;
  tern_session *session = NULL;
  st = tern_session_new(model, &options, &session);
  if (st != TERN_OK) return fail("tern_session_new", st);

  tern_sampling_params params = tern_sampling_params_default();
  params.temperature = temperature;
  tern_sampler sampler;
  st = tern_sampler_init(&sampler, &params);
  if (st != TERN_OK) return fail("tern_sampler_init", st);

  fputs(prompt, stdout);
  double t0 = now_seconds();
  st = tern_session_feed(session, tokens, n_prompt);
  if (st != TERN_OK) return fail("tern_session_feed", st);
  double t1 = now_seconds();
  tern_generate_params gen = {.max_tokens = n_predict, .stop_at_eos = 1, .decode_text = 1};
  tern_generate_result result;
  size_t bytes = 0;
  st = tern_session_generate(session, NULL, 0, &gen, &sampler, print_piece, &bytes, &result);
  if (st != TERN_OK) return fail("tern_session_generate", st);
  double t2 = now_seconds();
  putchar('\n');

  static const char *reasons[] = {"max tokens", "end of text", "callback", "context full"};
  fprintf(stderr, "prompt: %zu tokens in %.3f s (%.1f tokens/s)\n", n_prompt, t1 - t0, (double)n_prompt / (t1 - t0));
  fprintf(stderr, "generation: %u tokens, %zu bytes in %.3f s (%.1f tokens/s), stopped at %s\n", result.n_tokens,
          bytes, t2 - t1, (double)result.n_tokens / (t2 - t1), reasons[result.stop_reason & 3]);

  tern_session_free(session);
  tern_model_free(model);
  free(tokens);
  return 0;
}
