// A progress line on stderr: rewritten in place ("\r") on a terminal; anywhere else (a log file, a pipe) one whole line
// per update, so that logs stay readable and an error never lands on the end of a progress line.
#pragma once

#include <unistd.h>

#include <cstdio>
#include <string>

namespace dreambooth {

class ProgressLine {
 public:
  ProgressLine() : terminal_(::isatty(::fileno(stderr)) == 1) {}

  // Shows `text`; `last` closes the line.
  void update(const std::string& text, bool last) {
    if (terminal_) {
      std::fprintf(stderr, "\r%s   %s", text.c_str(), last ? "\n" : "");
      open_ = !last;
    } else {
      std::fprintf(stderr, "%s\n", text.c_str());
    }
  }
  // Before any other message: ends an open terminal line.
  void end_line() {
    if (open_) std::fputc('\n', stderr);
    open_ = false;
  }

 private:
  bool terminal_ = false, open_ = false;
};

}  // namespace dreambooth
