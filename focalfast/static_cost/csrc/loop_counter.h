// Loop counts of the CUDA kernel bodies on the host path: the static cost report's count build.
//
// nvcc -include's this header first into each csrc/*.cu. In host code it redefines `for` so that
// every loop counts its entries and iterations, and the histogram of its trip counts, in a tree
// keyed by (parent loop, file, line, ordinal among the loops of that line entered in one iteration
// of the parent), and `if` so that every branch counts, in its innermost loop, how often its condition
// held and how often not (per file and line; `if constexpr` is not counted). Device code (__CUDA_ARCH__) is untouched, so the cubins are the production ones.
// The system headers the kernels use are included here first, before the macro exists.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <cxxabi.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <typeinfo>
#include <utility>
#include <vector>

namespace ff_count {

struct Node {
  std::string file;
  int line = 0, ordinal = 0;
  long long entries = 0, iterations = 0;
  std::map<long long, long long> trips;                 // trip count -> entries
  std::map<std::tuple<std::string, int, int>, Node*> children;
  std::vector<Node*> order;  // children in the order they were first entered
  std::vector<std::pair<std::pair<const char*, int>, int>> seen;  // (file, line) -> loops entered this iteration
  std::map<std::pair<const char*, int>, std::pair<long long, long long>> branches;  // (file, line) -> (taken, not)

  int bump(const char* f, int l) {
    for (auto& s : seen) {
      if (s.first.second == l && std::strcmp(s.first.first, f) == 0) return s.second++;
    }
    seen.push_back({{f, l}, 1});
    return 0;
  }
  Node* child(const char* f, int l, int o) {
    const auto key = std::make_tuple(std::string(f), l, o);
    auto it = children.find(key);
    if (it != children.end()) return it->second;
    Node* n = new Node();
    n->file = f;
    n->line = l;
    n->ordinal = o;
    children[key] = n;
    order.push_back(n);
    return n;
  }
  std::string json() const {
    std::string s = "{\"file\":\"" + file + "\",\"line\":" + std::to_string(line) + ",\"ordinal\":" +
                    std::to_string(ordinal) + ",\"entries\":" + std::to_string(entries) +
                    ",\"iterations\":" + std::to_string(iterations) + ",\"trips\":{";
    bool first = true;
    for (const auto& t : trips) {
      s += (first ? "\"" : ",\"") + std::to_string(t.first) + "\":" + std::to_string(t.second);
      first = false;
    }
    s += "},\"branches\":[";
    first = true;
    for (const auto& b : branches) {
      s += std::string(first ? "" : ",") + "{\"file\":\"" + std::string(b.first.first) + "\",\"line\":" +
           std::to_string(b.first.second) + ",\"taken\":" + std::to_string(b.second.first) +
           ",\"not_taken\":" + std::to_string(b.second.second) + "}";
      first = false;
    }
    s += "],\"children\":[";
    first = true;
    for (const Node* c : order) {
      s += (first ? "" : ",") + c->json();
      first = false;
    }
    return s + "]}";
  }
};

inline Node& root() {
  static Node r;
  return r;
}

inline Node*& current() {
  static Node* c = &root();
  return c;
}

// One entry of a loop: made by the `for` macro around the loop, counts its iterations.
struct Entry {
  Node* node;
  Node* saved;
  long long count = 0;
  bool first = true;

  Entry(const char* f, int l) : saved(current()) {
    node = saved->child(f, l, saved->bump(f, l));
    ++node->entries;
    current() = node;
  }
  ~Entry() {
    ++node->trips[count];
    current() = saved;
  }
  bool once() {
    const bool f = first;
    first = false;
    return f;
  }
  struct Iterated {};
  Iterated iterate() {
    ++count;
    ++node->iterations;
    node->seen.clear();
    return {};
  }
};

// The condition of an `if` at (f, l): counted in the innermost loop running.
inline bool branch(const char* f, int l, bool taken) {
  auto& count = current()->branches[{f, l}];  // one file may have several __FILE__ pointers: JSON readers add them up
  ++(taken ? count.first : count.second);
  return taken;
}
// The `for` macro's own test: not a branch of the source.
inline bool branch(const char*, int, Entry::Iterated, bool taken) { return taken; }

}  // namespace ff_count

#ifdef FF_LOOP_COUNT_EXPORT
extern "C" __attribute__((visibility("default"))) const char* ff_loop_counts_json() {
  static std::string text;
  text = ff_count::root().json();
  return text.c_str();
}

extern "C" __attribute__((visibility("default"))) void ff_loop_counts_reset() {
  ff_count::root() = ff_count::Node();  // the old tree is leaked: a short-lived process
  ff_count::current() = &ff_count::root();
}
#endif

#if !defined(__CUDA_ARCH__) && !defined(FF_LOOP_COUNT_EXPORT)
#define if(...) if (::ff_count::branch(__FILE__, __LINE__, __VA_ARGS__))
#define for(...)                                                                          \
  for (::ff_count::Entry ff_loop_entry_(__FILE__, __LINE__); ff_loop_entry_.once();) \
    for (__VA_ARGS__)                                                                    \
      if (ff_loop_entry_.iterate(), false) {                                             \
      } else
#endif
