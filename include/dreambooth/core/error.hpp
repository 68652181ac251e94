// Errors: every failure is an exception whose message names the file, tensor, key or option at fault.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace dreambooth {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

namespace detail {
template <class... Parts>
std::string concat(Parts&&... parts) {
  std::ostringstream stream;
  (stream << ... << std::forward<Parts>(parts));
  return stream.str();
}
}  // namespace detail

// Throws dreambooth::Error with the parts streamed together.
template <class... Parts>
[[noreturn]] void fail(Parts&&... parts) {
  throw Error(detail::concat(std::forward<Parts>(parts)...));
}

}  // namespace dreambooth

// DB_CHECK(condition, message parts...): throws dreambooth::Error when the condition is false.
#define DB_CHECK(condition, ...)                       \
  do {                                                 \
    if (!(condition)) ::dreambooth::fail(__VA_ARGS__); \
  } while (false)
