// SHA-256 (OpenSSL's libcrypto) of bytes and of whole files, as lowercase hex.
//
// A1111 names a checkpoint by the first 10 hex digits of its file's SHA-256 ("Model hash" in a generated image's
// parameters); model_hash() in pipeline/infotext.hpp uses this.
#pragma once

#include <openssl/evp.h>

#include <algorithm>
#include <cstddef>
#include <filesystem>
#include <memory>
#include <span>
#include <string>

#include "dreambooth/core/error.hpp"
#include "dreambooth/io/mapped_file.hpp"

namespace dreambooth::io {

// Incremental: update() any number of times, then hex() once.
class Sha256 {
 public:
  Sha256() : context_(EVP_MD_CTX_new(), EVP_MD_CTX_free) {
    if (!context_ || EVP_DigestInit_ex(context_.get(), EVP_sha256(), nullptr) != 1) fail("SHA-256: OpenSSL could not start a digest");
  }
  void update(std::span<const std::byte> bytes) {
    if (EVP_DigestUpdate(context_.get(), bytes.data(), bytes.size()) != 1) fail("SHA-256: OpenSSL could not hash the data");
  }
  std::string hex() {
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int length = 0;
    if (EVP_DigestFinal_ex(context_.get(), digest, &length) != 1) fail("SHA-256: OpenSSL could not finish the digest");
    static const char kDigits[] = "0123456789abcdef";
    std::string out;
    for (unsigned int i = 0; i < length; ++i) {
      out += kDigits[digest[i] >> 4];
      out += kDigits[digest[i] & 15];
    }
    return out;
  }

 private:
  std::unique_ptr<EVP_MD_CTX, void (*)(EVP_MD_CTX*)> context_;
};

inline std::string sha256_hex(std::span<const std::byte> bytes) {
  Sha256 h;
  h.update(bytes);
  return h.hex();
}

// The whole file, read through a memory map in 16 MiB pieces.
inline std::string sha256_of_file(const std::filesystem::path& path) {
  const MappedFile file(path, "SHA-256 of");
  const auto bytes = file.bytes();
  Sha256 h;
  constexpr std::size_t kPiece = std::size_t{16} << 20;
  for (std::size_t at = 0; at < bytes.size(); at += kPiece) h.update(bytes.subspan(at, std::min(kPiece, bytes.size() - at)));
  return h.hex();
}

}  // namespace dreambooth::io
