// tern.hpp: a small header-only C++17 RAII wrapper over tern.h. Handles are freed by their destructors,
// errors become tern::Error exceptions, and exceptions thrown by a generation callback are carried across
// the C boundary (which must not unwind) and rethrown once tern has returned.
#pragma once

#include <tern.h>

#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace tern {

class Error : public std::runtime_error {
 public:
  Error(tern_status status, const std::string &what) : std::runtime_error(what), status_(status) {}
  tern_status status() const noexcept { return status_; }

 private:
  tern_status status_;
};

inline void check(tern_status status) {
  if (status != TERN_OK) throw Error(status, tern_last_error_message());
}

class Model {
 public:
  explicit Model(const std::string &path, uint32_t flags = 0) {
    tern_model *m = nullptr;
    check(tern_model_open(path.c_str(), flags, &m));
    handle_.reset(m);
  }
  // A model in memory (e.g. flash); `data` must outlive the Model.
  Model(const void *data, size_t size, uint32_t flags = 0) {
    tern_model *m = nullptr;
    check(tern_model_open_buffer(data, size, flags, &m));
    handle_.reset(m);
  }

  tern_model_config config() const {
    tern_model_config c;
    check(tern_model_get_config(get(), &c));
    return c;
  }
  size_t arena_size(const tern_session_options &options) const {
    size_t n = 0;
    check(tern_model_arena_size(get(), &options, &n));
    return n;
  }
  std::vector<uint32_t> tokenize(std::string_view text, bool as_prompt = true) const {
    uint32_t flags = as_prompt ? TERN_TOKENIZE_PROMPT : 0;
    size_t n = 0;
    tern_status st = tern_tokenize(get(), text.data(), text.size(), flags, nullptr, 0, &n);
    if (st != TERN_ERR_BUFFER_TOO_SMALL) check(st);
    std::vector<uint32_t> ids(n);
    check(tern_tokenize(get(), text.data(), text.size(), flags, ids.data(), ids.size(), &n));
    return ids;
  }
  std::string detokenize(const std::vector<uint32_t> &ids) const {
    size_t len = 0;
    tern_status st = tern_detokenize(get(), ids.data(), ids.size(), nullptr, 0, &len);
    if (st != TERN_ERR_BUFFER_TOO_SMALL) check(st);
    std::string text(len + 1, '\0');
    check(tern_detokenize(get(), ids.data(), ids.size(), text.data(), text.size(), &len));
    text.resize(len);
    return text;
  }
  const tern_model *get() const noexcept { return handle_.get(); }

 private:
  struct Free {
    void operator()(tern_model *m) const noexcept { tern_model_free(m); }
  };
  std::unique_ptr<tern_model, Free> handle_;
};

class Sampler {
 public:
  explicit Sampler(const tern_sampling_params &params = tern_sampling_params_default()) {
    check(tern_sampler_init(&state_, &params));
  }
  tern_sampler *get() noexcept { return &state_; }

 private:
  tern_sampler state_;
};

// A session; `arena`, when given, is a caller buffer the session runs in (it must outlive the Session).
class Session {
 public:
  // Return false to stop generating.
  using OnToken = std::function<bool(uint32_t token, std::string_view text)>;

  explicit Session(const Model &model, const tern_session_options &options = {}) {
    tern_session *s = nullptr;
    check(tern_session_new(model.get(), &options, &s));
    handle_.reset(s);
  }
  Session(const Model &model, const tern_session_options &options, std::vector<unsigned char> &arena) {
    tern_session *s = nullptr;
    check(tern_session_new_in_arena(model.get(), &options, arena.data(), arena.size(), &s));
    handle_.reset(s);
  }

  void feed(const std::vector<uint32_t> &tokens) { check(tern_session_feed(get(), tokens.data(), tokens.size())); }
  std::vector<float> logits(size_t vocab) {
    std::vector<float> out(vocab);
    check(tern_session_get_logits(get(), out.data(), out.size()));
    return out;
  }
  uint32_t sample(Sampler &sampler) {
    uint32_t t = 0;
    check(tern_session_sample(get(), sampler.get(), &t));
    return t;
  }
  tern_generate_result generate(const std::vector<uint32_t> &prompt, uint32_t max_tokens, Sampler &sampler,
                                const OnToken &on_token, bool stop_at_eos = true) {
    Callback cb{&on_token, nullptr};
    tern_generate_params params{max_tokens, stop_at_eos ? 1u : 0u, 1};
    tern_generate_result result{};
    tern_status st = tern_session_generate(get(), prompt.data(), prompt.size(), &params, sampler.get(),
                                           &Callback::trampoline, &cb, &result);
    if (cb.error) std::rethrow_exception(cb.error);
    check(st);
    return result;
  }
  size_t position() const {
    size_t p = 0;
    check(tern_session_position(handle_.get(), &p));
    return p;
  }
  void truncate(size_t position) { check(tern_session_truncate(get(), position)); }
  void reset() { check(tern_session_reset(get())); }
  void set_threads(uint32_t n) { check(tern_session_set_threads(get(), n)); }
  tern_session *get() noexcept { return handle_.get(); }

 private:
  struct Callback {
    const OnToken *on_token;
    std::exception_ptr error;
    static int32_t trampoline(void *user, uint32_t token, const char *text, size_t len) noexcept {
      auto *self = static_cast<Callback *>(user);
      if (token == TERN_NO_TOKEN && len == 0) return 0;
      try {
        return (*self->on_token)(token, std::string_view(text ? text : "", len)) ? 0 : 1;
      } catch (...) {
        self->error = std::current_exception();  // rethrown after tern returns; never unwinds through it
        return 1;
      }
    }
  };
  struct Free {
    void operator()(tern_session *s) const noexcept { tern_session_free(s); }
  };
  std::unique_ptr<tern_session, Free> handle_;
};

inline std::string version() { return tern_version(); }

}  // namespace tern
