// DB_HOST_DEVICE marks a function that the CUDA backend's kernels call as well as host code: __host__ __device__ under
// nvcc, nothing elsewhere.
#pragma once

#if defined(__CUDACC__)
#define DB_HOST_DEVICE __host__ __device__
#else
#define DB_HOST_DEVICE
#endif
