// Shared-memory segments in /dev/shm for the ring's same-host payload path (see shm.cc).
#pragma once

#include <napi.h>

namespace rd {
namespace shm {

// Adds shmCreate, shmOpen, shmUnmap and shmUnlink to the addon's exports.
void exportShm(Napi::Env env, Napi::Object exports);

}  // namespace shm
}  // namespace rd
