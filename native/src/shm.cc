// Shared-memory segments for the ring's same-host payload path (src/allreduce/shm.ts).
//
// A sender creates a file in /dev/shm (mode 0600, exclusive, its tmpfs pages allocated up front so
// that a full /dev/shm fails here with ENOSPC instead of with SIGBUS at the first write) and maps
// it read-write; the receiver maps the same file read-only. JavaScript sees each mapping as an
// external ArrayBuffer. `shmUnmap` detaches the ArrayBuffer (every view of it becomes empty, so no
// JavaScript code can reach the pages afterwards) and then unmaps; a mapping that is never unmapped
// explicitly is unmapped when the ArrayBuffer is collected.
//
// Names are checked here too, not only in TypeScript: one path component of [A-Za-z0-9._-] that
// does not start with '.', so nothing outside /dev/shm can be named. Opening refuses symlinks
// (O_NOFOLLOW), FIFOs and devices (O_NONBLOCK, then S_ISREG), files of another user and files any
// other user may read or write.
#include "shm.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <mutex>
#include <string>
#include <unordered_map>

namespace rd {
namespace shm {
namespace {

const char kDir[] = "/dev/shm/";

struct Mapping {
  void* addr;
  size_t len;
  bool unmapped = false;
  // An explicit shmUnmap is running: the finalizer (which detaching may run) must not free this.
  bool pinned = false;
  bool finalized = false;
};

std::mutex g_mu;
std::unordered_map<void*, Mapping*> g_live;

bool validName(const std::string& name) {
  if (name.empty() || name.size() > 200 || name[0] == '.') return false;
  for (char c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
                    c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

std::string nameArg(const Napi::CallbackInfo& info, size_t i) {
  if (!info[i].IsString()) throw Napi::TypeError::New(info.Env(), "segment name must be a string");
  std::string name = info[i].As<Napi::String>().Utf8Value();
  if (!validName(name)) throw Napi::TypeError::New(info.Env(), "invalid segment name");
  return name;
}

size_t bytesArg(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (!info[i].IsNumber()) throw Napi::TypeError::New(info.Env(), std::string(what) + " must be a number");
  const double d = info[i].As<Napi::Number>().DoubleValue();
  if (!(d >= 1 && d <= 1099511627776.0 && d == (double)(uint64_t)d)) {
    throw Napi::RangeError::New(info.Env(), std::string(what) + " must be an integer in [1, 2^40]");
  }
  return (size_t)d;
}

[[noreturn]] void throwErrno(const Napi::Env& env, const std::string& what, int err) {
  Napi::Error e = Napi::Error::New(env, what + ": " + std::strerror(err));
  e.Set("errno", Napi::Number::New(env, err));
  throw e;
}

void finalize(napi_env, void*, void* hint) {
  Mapping* m = static_cast<Mapping*>(hint);
  std::lock_guard<std::mutex> lk(g_mu);
  if (!m->unmapped) {
    munmap(m->addr, m->len);
    m->unmapped = true;
    auto it = g_live.find(m->addr);
    if (it != g_live.end() && it->second == m) g_live.erase(it);
  }
  if (m->pinned) {
    m->finalized = true;
    return;
  }
  delete m;
}

Napi::Value wrap(const Napi::Env& env, void* addr, size_t len) {
  Mapping* m = new Mapping{addr, len};
  napi_value ab;
  const napi_status st = napi_create_external_arraybuffer(env, addr, len, finalize, m, &ab);
  if (st != napi_ok) {
    munmap(addr, len);
    delete m;
    throw Napi::Error::New(env, "cannot wrap the mapping in an ArrayBuffer");
  }
  {
    std::lock_guard<std::mutex> lk(g_mu);
    g_live[addr] = m;
  }
  return Napi::Value(env, ab);
}

// shmCreate(name, bytes): creates /dev/shm/<name> (0600, must not exist), allocates its pages and
// returns a read-write shared mapping as an ArrayBuffer. On any failure the file is removed.
Napi::Value Create(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  const std::string name = nameArg(info, 0);
  const size_t bytes = bytesArg(info, 1, "bytes");
  const std::string path = std::string(kDir) + name;
  const int fd = open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) throwErrno(env, "open " + path, errno);
  int err = 0;
  std::string what;
  // fchmod: the umask may have removed bits, never added; this pins the mode to exactly 0600.
  if (fchmod(fd, 0600) != 0) {
    err = errno;
    what = "fchmod";
  } else if ((err = posix_fallocate(fd, 0, (off_t)bytes)) != 0) {
    what = "allocate";
  }
  void* addr = MAP_FAILED;
  if (err == 0) {
    addr = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
    if (addr == MAP_FAILED) {
      err = errno;
      what = "mmap";
    }
  }
  close(fd);
  if (err != 0) {
    unlink(path.c_str());
    throwErrno(env, what + " " + path, err);
  }
  return wrap(env, addr, bytes);
}

// shmOpen(name, maxBytes): maps /dev/shm/<name> read-only (a regular file of this user, mode 0600,
// 1 … maxBytes bytes) and returns the mapping as an ArrayBuffer of the file's size.
Napi::Value Open(const Napi::CallbackInfo& info) {
  auto env = info.Env();
  const std::string name = nameArg(info, 0);
  const size_t maxBytes = bytesArg(info, 1, "maxBytes");
  const std::string path = std::string(kDir) + name;
  const int fd = open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) throwErrno(env, "open " + path, errno);
  struct stat st;
  if (fstat(fd, &st) != 0) {
    const int err = errno;
    close(fd);
    throwErrno(env, "stat " + path, err);
  }
  std::string bad;
  if (!S_ISREG(st.st_mode)) bad = "not a regular file";
  else if (st.st_uid != geteuid()) bad = "owned by another user";
  else if ((st.st_mode & 077) != 0) bad = "accessible to other users";
  else if (st.st_size <= 0 || (uint64_t)st.st_size > maxBytes) bad = "size out of range";
  if (!bad.empty()) {
    close(fd);
    throw Napi::Error::New(env, path + ": " + bad);
  }
  const size_t len = (size_t)st.st_size;
  void* addr = mmap(nullptr, len, PROT_READ, MAP_SHARED | MAP_POPULATE, fd, 0);
  const int err = errno;
  close(fd);
  if (addr == MAP_FAILED) throwErrno(env, "mmap " + path, err);
  return wrap(env, addr, len);
}

// shmUnmap(arrayBuffer): detaches it and unmaps its pages; false if it is not a live mapping of
// this module or cannot be detached (then it stays mapped until it is collected).
Napi::Value Unmap(const Napi::CallbackInfo& info) {
  napi_env env = info.Env();
  napi_value v = info[0];
  bool isAb = false;
  if (napi_is_arraybuffer(env, v, &isAb) != napi_ok || !isAb) return Napi::Boolean::New(env, false);
  void* data = nullptr;
  size_t len = 0;
  if (napi_get_arraybuffer_info(env, v, &data, &len) != napi_ok || data == nullptr) {
    return Napi::Boolean::New(env, false);
  }
  Mapping* m = nullptr;
  {
    std::lock_guard<std::mutex> lk(g_mu);
    auto it = g_live.find(data);
    if (it == g_live.end() || it->second->len != len) return Napi::Boolean::New(env, false);
    m = it->second;
    m->pinned = true;
  }
  // Detach first: afterwards no view can reach the pages (they all have length 0).
  const bool detached = napi_detach_arraybuffer(env, v) == napi_ok;
  std::lock_guard<std::mutex> lk(g_mu);
  if (detached && !m->unmapped) {
    munmap(m->addr, m->len);
    m->unmapped = true;
    auto it = g_live.find(m->addr);
    if (it != g_live.end() && it->second == m) g_live.erase(it);
  }
  m->pinned = false;
  if (m->finalized) delete m;
  return Napi::Boolean::New(env, detached);
}

// shmUnlink(name): removes /dev/shm/<name>; false if it did not exist.
Napi::Value Unlink(const Napi::CallbackInfo& info) {
  const std::string name = nameArg(info, 0);
  const std::string path = std::string(kDir) + name;
  if (unlink(path.c_str()) == 0) return Napi::Boolean::New(info.Env(), true);
  if (errno == ENOENT) return Napi::Boolean::New(info.Env(), false);
  throwErrno(info.Env(), "unlink " + path, errno);
}

}  // namespace

void exportShm(Napi::Env env, Napi::Object exports) {
  exports.Set("shmCreate", Napi::Function::New(env, Create));
  exports.Set("shmOpen", Napi::Function::New(env, Open));
  exports.Set("shmUnmap", Napi::Function::New(env, Unmap));
  exports.Set("shmUnlink", Napi::Function::New(env, Unlink));
}

}  // namespace shm
}  // namespace rd
