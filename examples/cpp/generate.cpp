// generate.cpp: the C API through the RAII wrapper in tern.hpp. Runs a session in a caller-owned arena,
// streams a greedy continuation of a prompt, rewinds to the prompt (tern_session_truncate) and generates
// again, which must give the same text; then shows an exception thrown in the token callback arriving at
// the caller while the session stays usable.
//
//   generate_cpp MODEL.tern "PROMPT" [N_PREDICT]
//
// Build (after runtime/capi/install.sh):
//   c++ -std=c++17 -I examples/cpp generate.cpp $(pkg-config --cflags --libs tern-static) -o generate_cpp
#include "tern.hpp"

#include <cstdio>
#include <iostream>
#include <string>

int main(int argc, char **argv) {
  if (argc < 3) {
    std::cerr << "usage: " << argv[0] << " MODEL.tern PROMPT [N_PREDICT]\n";
    return 2;
  }
  uint32_t n_predict = argc > 3 ? static_cast<uint32_t>(std::stoul(argv[3])) : 32;
  try {
    tern::Model model(argv[1]);
    tern_model_config config = model.config();
    std::cerr << "tern " << tern::version() << ": " << config.n_layers << " blocks, hidden " << config.hidden_size
              << ", vocabulary " << config.vocab_size << "\n";

    std::vector<uint32_t> prompt = model.tokenize(argv[2]);
    tern_session_options options{};
    options.max_context = static_cast<uint32_t>(std::min<size_t>(prompt.size() + n_predict, config.context_length));
    std::vector<unsigned char> arena(model.arena_size(options));
    tern::Session session(model, options, arena);
    std::cerr << "arena: " << arena.size() << " bytes, caller-owned\n";

    auto take = [&](const std::vector<uint32_t> &feed_first) {
      tern::Sampler greedy(tern_sampling_params_greedy());
      std::string text;
      session.generate(feed_first, n_predict, greedy, [&](uint32_t, std::string_view piece) {
        text += piece;
        std::cout << piece << std::flush;
        return true;
      });
      std::cout << "\n";
      return text;
    };
    std::cout << argv[2];
    std::string first = take(prompt);
    // Keep the KV cache of all prompt tokens but the last, which is fed again to get its logits back.
    session.truncate(prompt.size() - 1);
    std::cout << argv[2];
    std::string second = take({prompt.back()});
    if (first != second) {
      std::cerr << "regenerating after truncate gave different text\n";
      return 1;
    }

    // An exception in the callback stops generation and reaches us after tern has returned.
    session.truncate(prompt.size() - 1);
    tern::Sampler sampler;
    int seen = 0;
    try {
      session.generate(
          {prompt.back()}, n_predict, sampler,
          [&](uint32_t, std::string_view) {
            if (++seen == 3) throw std::runtime_error("stop from the callback");
            return true;
          },
          /*stop_at_eos=*/false);
      std::cerr << "the callback's exception was lost\n";
      return 1;
    } catch (const std::runtime_error &e) {
      std::cerr << "caught \"" << e.what() << "\"; position " << session.position() << " = prompt "
                << prompt.size() << " + 3 generated\n";
      if (session.position() != prompt.size() + 3) return 1;
    }
    // And tern's own errors arrive as tern::Error.
    try {
      session.feed({config.vocab_size});
      return 1;
    } catch (const tern::Error &e) {
      std::cerr << "tern::Error " << e.status() << ": " << e.what() << "\n";
      if (e.status() != TERN_ERR_TOKEN_OUT_OF_RANGE) return 1;
    }
  } catch (const tern::Error &e) {
    std::cerr << "tern error " << e.status() << ": " << e.what() << "\n";
    return 1;
  }
  return 0;
}
