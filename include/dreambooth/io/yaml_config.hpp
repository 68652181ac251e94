// A YAML configuration as Hydra and OmegaConf read NeMo's: a file, then key=value overrides set into the tree (before any
// interpolation is resolved, as Hydra does), then values read by dotted path with OmegaConf's interpolation resolved on
// access (so a key nobody reads may refer to something absent, as in NeMo's launcher files):
//   ${a.b}        the node at a.b from the root, whatever its type, when it is the whole value; inside a longer string
//                 its text ("${name}-{step}" -> "Dreambooth-{step}");
//   ${.x} ${..x}  relative: a sibling of the node holding the interpolation, one dot more per level up;
//   \${           a literal "${";
//   ${multiply:a,b} ${sum:a,b} ${divide_ceil:a,b} ${divide_floor:a,b}   the resolvers NeMo and its launcher register;
//   ${training.x} in a file without a training: section is ${x}: the NeMo launcher composes its stage files under
//                 training:, and a stage file is read here on its own.
// A missing key, an unknown resolver or a cycle is an error naming the key that holds the interpolation.
#pragma once

#include <yaml-cpp/yaml.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "dreambooth/core/error.hpp"
#include "dreambooth/core/text.hpp"

namespace dreambooth::io {

class YamlConfig {
 public:
  // `file` (optional) then `overrides` ("a.b=value", value parsed as YAML; a leading "+" as Hydra's is accepted).
  static YamlConfig load(const std::optional<std::filesystem::path>& file, const std::vector<std::string>& overrides) {
    YamlConfig c;
    c.root_ = YAML::Node(YAML::NodeType::Map);
    if (file) {
      if (!std::filesystem::exists(*file)) fail("config file ", file->string(), " does not exist");
      if (std::filesystem::is_directory(*file)) fail("config file ", file->string(), " is a directory, not a YAML file");
      std::ifstream in(*file, std::ios::binary);
      if (!in) fail("config file ", file->string(), ": cannot open");
      const std::string text{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
      c.root_ = parse(text, "config file " + file->string());
      if (c.root_.IsNull()) c.root_ = YAML::Node(YAML::NodeType::Map);
      if (!c.root_.IsMap()) fail("config file ", file->string(), ": the document must be a mapping of keys");
      c.check_keys(c.root_, "", "config file " + file->string());
      c.file_ = file->string();
    }
    for (auto o : overrides) {
      if (!o.empty() && o[0] == '+') o.erase(0, 1);
      const auto eq = o.find('=');
      if (eq == std::string::npos || eq == 0) fail("override \"", o, "\" is not key=value (e.g. model.prior_loss_weight=1.0)");
      const auto origin = "command line: override \"" + o + "\"";
      const YAML::Node value = parse(o.substr(eq + 1), origin + ": the value");
      const auto path = o.substr(0, eq);
      for (const auto& part : split(path))
        if (part.empty()) fail(origin, ": \"", path, "\" is not a dotted key (e.g. model.prior_loss_weight)");
      check_keys(value, path, origin);
      c.set(path, value, origin);
      c.overridden_[path] = origin;
    }
    return c;
  }

  // A document given as text (`origin` names it in errors), without overrides.
  static YamlConfig from_text(const std::string& text, const std::string& origin) {
    YamlConfig c;
    c.root_ = parse(text, origin);
    if (!c.root_.IsDefined() || c.root_.IsNull()) c.root_ = YAML::Node(YAML::NodeType::Map);
    if (!c.root_.IsMap()) fail(origin, ": the document must be a mapping of keys");
    c.check_keys(c.root_, "", origin);
    c.file_ = origin;
    return c;
  }

  // A YAML document; a syntax error names `origin` and the line and column.
  static YAML::Node parse(const std::string& text, const std::string& origin) {
    try {
      return YAML::Load(text);
    } catch (const YAML::Exception& e) {
      if (e.mark.is_null()) fail(origin, ": not valid YAML: ", e.msg);
      fail(origin, ": not valid YAML at line ", e.mark.line + 1, ", column ", e.mark.column + 1, ": ", e.msg);
    }
  }

  // Where a key's value came from, for messages.
  std::string origin(const std::string& path) const {
    const auto it = overridden_.find(path);
    if (it != overridden_.end()) return it->second;
    return file_.empty() ? "config" : "config file " + file_;
  }
  bool from_file() const { return !file_.empty(); }

  // The unresolved node at a dotted path (an invalid node when absent).
  YAML::Node raw(const std::string& path) const { return find(root_, split(path)); }
  bool has(const std::string& path) const {
    const auto n = find(root_, split(path));
    return n.IsDefined();
  }

  // The value at a dotted path with every interpolation in it resolved (a deep copy; absent: an invalid node).
  YAML::Node get(const std::string& path) const {
    const auto parts = split(path);
    const auto n = find(root_, parts);
    if (!n.IsDefined()) return n;
    std::set<std::string> visiting;
    return resolve(n, parts, visiting);
  }

  // Every leaf key (a scalar, null or sequence value) as a dotted path, with the file's order kept.
  std::vector<std::string> leaves() const {
    std::vector<std::string> out;
    walk(root_, "", out);
    return out;
  }

 private:
  static std::vector<std::string> split(const std::string& path) { return text::split(path, '.'); }
  static std::string join(const std::vector<std::string>& parts, std::size_t n) {
    std::string s;
    for (std::size_t i = 0; i < n && i < parts.size(); ++i) s += (i ? "." : "") + parts[i];
    return s;
  }

  // yaml-cpp's operator[] on a const node never inserts.
  static YAML::Node find(const YAML::Node& root, const std::vector<std::string>& parts) {
    YAML::Node n = root;
    for (const auto& p : parts) {
      if (!n.IsDefined() || !n.IsMap()) return YAML::Node(YAML::NodeType::Undefined);
      const YAML::Node child = static_cast<const YAML::Node&>(n)[p];
      if (!child.IsDefined()) return YAML::Node(YAML::NodeType::Undefined);
      n.reset(child);
    }
    return n;
  }

  void set(const std::string& path, const YAML::Node& value, const std::string& origin) {
    const auto parts = split(path);
    YAML::Node n = root_;
    for (std::size_t i = 0; i + 1 < parts.size(); ++i) {
      YAML::Node child = n[parts[i]];
      if (!child.IsDefined() || child.IsNull()) {
        n[parts[i]] = YAML::Node(YAML::NodeType::Map);
        child = n[parts[i]];
      }
      if (!child.IsMap()) fail(origin, ": \"", join(parts, i + 1), "\" is not a mapping, so \"", path, "\" cannot be set");
      n.reset(child);
    }
    n[parts.back()] = value;
  }

  // Every mapping key is a plain name (not empty, a list or a mapping).
  static void check_keys(const YAML::Node& n, const std::string& prefix, const std::string& origin) {
    if (n.IsMap()) {
      for (const auto& item : n) {
        const auto& key = item.first;
        const auto at = key.Mark().is_null()
                            ? std::string()
                            : " (line " + std::to_string(key.Mark().line + 1) + ", column " + std::to_string(key.Mark().column + 1) + ")";
        if (!key.IsScalar() || key.Scalar().empty())
          fail(origin, ": a key under \"", prefix, "\"", at, " is not a name (", key.IsScalar() ? "empty" : "a list or mapping", ")");
        check_keys(item.second, prefix.empty() ? key.Scalar() : prefix + "." + key.Scalar(), origin);
      }
    } else if (n.IsSequence()) {
      for (const auto& item : n) check_keys(item, prefix, origin);
    }
  }

  static void walk(const YAML::Node& n, const std::string& prefix, std::vector<std::string>& out) {
    if (n.IsMap() && (n.size() > 0 || prefix.empty())) {
      for (const auto& item : n) walk(item.second, prefix.empty() ? item.first.as<std::string>() : prefix + "." + item.first.as<std::string>(), out);
      return;
    }
    out.push_back(prefix);
  }

  YAML::Node resolve(const YAML::Node& n, const std::vector<std::string>& at, std::set<std::string>& visiting) const {
    if (n.IsMap()) {
      YAML::Node out(YAML::NodeType::Map);
      for (const auto& item : n) {
        auto child_at = at;
        child_at.push_back(item.first.as<std::string>());
        out[item.first] = resolve(item.second, child_at, visiting);
      }
      return out;
    }
    if (n.IsSequence()) {
      YAML::Node out(YAML::NodeType::Sequence);
      for (std::size_t i = 0; i < n.size(); ++i) {
        auto child_at = at;
        child_at.push_back(std::to_string(i));
        out.push_back(resolve(n[i], child_at, visiting));
      }
      return out;
    }
    if (!n.IsScalar()) return YAML::Clone(n);
    const auto text = n.Scalar();
    if (text.find("${") == std::string::npos) return YAML::Clone(n);
    return interpolate(text, at, visiting);
  }

  // The value of a scalar holding interpolations, found at `at` (the key holding it).
  // `guard`: the key is entered into `visiting` (a resolver's arguments belong to the key already entered).
  YAML::Node interpolate(const std::string& text, const std::vector<std::string>& at, std::set<std::string>& visiting, bool guard = true) const {
    const auto where = join(at, at.size());
    if (guard && !visiting.insert(where).second) fail("config key \"", where, "\": interpolation cycle through \"", text, "\"");
    struct Leave {
      std::set<std::string>& s;
      std::string k;
      bool active;
      ~Leave() {
        if (active) s.erase(k);
      }
    } leave{visiting, where, guard};
    // a whole value that is one interpolation keeps the referenced node's type
    if (text.size() > 3 && text.rfind("${", 0) == 0 && matching_brace(text, 1) == text.size() - 1)
      return evaluate(text.substr(2, text.size() - 3), at, visiting);
    std::string out;
    for (std::size_t i = 0; i < text.size();) {
      if (text[i] == '\\' && text.compare(i + 1, 2, "${") == 0) {
        out += "${";
        i += 3;
      } else if (text.compare(i, 2, "${") == 0) {
        const auto close = matching_brace(text, i + 1);
        if (close == std::string::npos) fail("config key \"", where, "\": unclosed interpolation in \"", text, "\"");
        const auto value = evaluate(text.substr(i + 2, close - i - 2), at, visiting);
        if (!value.IsScalar() && !value.IsNull()) fail("config key \"", where, "\": \"", text, "\" puts a mapping or list inside a string");
        out += value.IsNull() ? "None" : value.Scalar();
        i = close + 1;
      } else {
        out += text[i++];
      }
    }
    return YAML::Node(out);
  }

  static std::size_t matching_brace(const std::string& text, std::size_t open) {
    int depth = 0;
    for (std::size_t i = open; i < text.size(); ++i) {
      if (text[i] == '{') ++depth;
      if (text[i] == '}' && --depth == 0) return i;
    }
    return std::string::npos;
  }

  YAML::Node evaluate(const std::string& expr, const std::vector<std::string>& at, std::set<std::string>& visiting) const {
    const auto where = join(at, at.size());
    const auto colon = expr.find(':');
    if (colon != std::string::npos && expr.find("${") > colon) {  // a resolver: name:arg1,arg2
      const auto name = expr.substr(0, colon);
      std::vector<double> args;
      std::size_t start = colon + 1;
      while (start <= expr.size()) {
        auto comma = expr.find(',', start);
        if (comma == std::string::npos) comma = expr.size();
        auto arg = expr.substr(start, comma - start);
        while (!arg.empty() && arg.front() == ' ') arg.erase(0, 1);
        while (!arg.empty() && arg.back() == ' ') arg.pop_back();
        const auto value = arg.find("${") != std::string::npos ? interpolate(arg, at, visiting, /*guard=*/false) : YAML::Node(arg);
        try {
          args.push_back(value.as<double>());
        } catch (const YAML::Exception&) {
          fail("config key \"", where, "\": resolver ", name, " needs numbers, not \"", arg, "\"");
        }
        start = comma + 1;
      }
      if (args.size() != 2) fail("config key \"", where, "\": resolver ", name, " takes two arguments");
      double r;
      if (name == "multiply")
        r = args[0] * args[1];
      else if (name == "sum")
        r = args[0] + args[1];
      else if (name == "divide_ceil")
        r = std::ceil(args[0] / args[1]);
      else if (name == "divide_floor")
        r = std::floor(args[0] / args[1]);
      else
        fail("config key \"", where, "\": unknown resolver \"", name, "\" (multiply, sum, divide_ceil, divide_floor are known)");
      if (r == std::floor(r) && std::abs(r) < 9e15) return YAML::Node(static_cast<long long>(r));
      return YAML::Node(r);
    }
    // a path: absolute, or relative with leading dots
    std::vector<std::string> target;
    std::string path = expr;
    if (!path.empty() && path[0] == '.') {
      std::size_t dots = 0;
      while (dots < path.size() && path[dots] == '.') ++dots;
      // one dot: the container of the key holding the interpolation; each further dot one level up
      if (dots > at.size()) fail("config key \"", where, "\": \"${", expr, "}\" climbs above the root");
      target.assign(at.begin(), at.end() - static_cast<std::ptrdiff_t>(dots));
      path.erase(0, dots);
    }
    for (const auto& p : split(path)) target.push_back(p);
    auto node = find(root_, target);
    if (!node.IsDefined() && target.size() > 1 && target[0] == "training" && !find(root_, {"training"}).IsDefined()) {
      target.erase(target.begin());  // the launcher composes stage files under training:
      node = find(root_, target);
    }
    if (!node.IsDefined()) fail("config key \"", where, "\": interpolation \"${", expr, "}\": no key \"", join(target, target.size()), "\"");
    return resolve(node, target, visiting);
  }

  YAML::Node root_;
  std::string file_;
  std::map<std::string, std::string> overridden_;
};

}  // namespace dreambooth::io
