/* A CUDA driver that does nothing: every entry point Triton's NVIDIA driver module
 * (triton/backends/nvidia/driver.c) and its launcher call returns CUDA_SUCCESS with the
 * outputs an H100 (sm_90) would give, and touches no memory behind a device pointer.
 * perf/host_overhead.py builds it as libcuda.so.1 so Triton's real launch path runs on a
 * machine without a GPU; what is left to time is the host's work.
 *
 * Built against the cuda.h that Triton bundles, so every signature (and the _v2 names
 * its macros map to) is the one Triton's driver module was compiled against. */
#include "cuda.h"

#include <stdlib.h>
#include <string.h>

/* Counters the benchmark reads through ctypes: launches that reached the driver. */
static unsigned long long launch_count;
static unsigned long long pointer_query_count;

unsigned long long tritort_stub_launch_count(void) { return launch_count; }

/* The last launch as the driver got it, for checking what a launcher packed: grid, block,
 * shared bytes, attribute count and the first 8 bytes behind each of the first
 * `recorded_params` parameter pointers (the caller compares each type's own size). */
static int recorded_params;
static unsigned int last_config[8];
static unsigned long long last_params[64];

void tritort_stub_record_params(int count) { recorded_params = count < 64 ? count : 64; }
const unsigned int *tritort_stub_last_config(void) { return last_config; }
const unsigned long long *tritort_stub_last_params(void) { return last_params; }
unsigned long long tritort_stub_pointer_query_count(void) { return pointer_query_count; }

/* Handles are addresses of these, so they are unique and never NULL. */
struct stub_context { int device; };
struct stub_function { int num_regs; };
struct stub_module { struct stub_function function; };

static struct stub_context primary_context = {0};
/* The current context is per thread, as in the real driver. */
static __thread CUcontext current_context;
static size_t limits[CU_LIMIT_MAX];

/* H100 SXM5's values for the attributes Triton and torch read; 0 for the rest. */
static int device_attribute(CUdevice_attribute attribute) {
  switch (attribute) {
  case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR: return 9;
  case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR: return 0;
  case CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT: return 132;
  case CU_DEVICE_ATTRIBUTE_WARP_SIZE: return 32;
  case CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK: return 1024;
  case CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR: return 2048;
  case CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_X: return 1024;
  case CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Y: return 1024;
  case CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Z: return 64;
  case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_X: return 2147483647;
  case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Y: return 65535;
  case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Z: return 65535;
  case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK: return 49152;
  case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN: return 232448;
  case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR: return 233472;
  case CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_BLOCK: return 65536;
  case CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_MULTIPROCESSOR: return 65536;
  case CU_DEVICE_ATTRIBUTE_CLOCK_RATE: return 1980000;        /* kHz */
  case CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE: return 2619000; /* kHz */
  case CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH: return 5120;
  case CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE: return 52428800;
  case CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING: return 1;
  case CU_DEVICE_ATTRIBUTE_COOPERATIVE_LAUNCH: return 1;
  case CU_DEVICE_ATTRIBUTE_CLUSTER_LAUNCH: return 1;
  default: return 0;
  }
}

/* -- initialization, versions, errors ------------------------------------------------- */
CUresult cuInit(unsigned int flags) { (void)flags; return CUDA_SUCCESS; }

CUresult cuDriverGetVersion(int *version) {
  *version = 12080; /* CUDA 12.8, an H100's usual driver */
  return CUDA_SUCCESS;
}

CUresult cuGetErrorString(CUresult error, const char **text) {
  *text = error == CUDA_SUCCESS ? "no error" : "error from the stub CUDA driver";
  return CUDA_SUCCESS;
}

CUresult cuGetErrorName(CUresult error, const char **text) {
  *text = error == CUDA_SUCCESS ? "CUDA_SUCCESS" : "CUDA_ERROR_STUB";
  return CUDA_SUCCESS;
}

/* -- devices -------------------------------------------------------------------------- */
CUresult cuDeviceGetCount(int *count) { *count = 1; return CUDA_SUCCESS; }

CUresult cuDeviceGet(CUdevice *device, int ordinal) {
  if (ordinal != 0)
    return CUDA_ERROR_INVALID_DEVICE;
  *device = 0;
  return CUDA_SUCCESS;
}

CUresult cuDeviceGetName(char *name, int length, CUdevice device) {
  (void)device;
  if (length > 0) {
    strncpy(name, "NVIDIA H100 80GB HBM3 (stub driver)", (size_t)length - 1);
    name[length - 1] = '\0';
  }
  return CUDA_SUCCESS;
}

CUresult cuDeviceGetAttribute(int *value, CUdevice_attribute attribute, CUdevice device) {
  if (device != 0)
    return CUDA_ERROR_INVALID_DEVICE;
  *value = device_attribute(attribute);
  return CUDA_SUCCESS;
}

/* -- contexts ------------------------------------------------------------------------- */
CUresult cuDevicePrimaryCtxRetain(CUcontext *context, CUdevice device) {
  if (device != 0)
    return CUDA_ERROR_INVALID_DEVICE;
  *context = (CUcontext)&primary_context;
  return CUDA_SUCCESS;
}

CUresult cuDevicePrimaryCtxRelease(CUdevice device) { (void)device; return CUDA_SUCCESS; }

CUresult cuCtxGetCurrent(CUcontext *context) {
  *context = current_context;
  return CUDA_SUCCESS;
}

CUresult cuCtxSetCurrent(CUcontext context) {
  current_context = context;
  return CUDA_SUCCESS;
}

CUresult cuCtxGetDevice(CUdevice *device) {
  if (!current_context)
    return CUDA_ERROR_INVALID_CONTEXT;
  *device = ((struct stub_context *)current_context)->device;
  return CUDA_SUCCESS;
}

CUresult cuCtxSynchronize(void) { return CUDA_SUCCESS; }

CUresult cuCtxGetLimit(size_t *value, CUlimit limit) {
  if ((unsigned)limit >= CU_LIMIT_MAX)
    return CUDA_ERROR_INVALID_VALUE;
  *value = limits[limit];
  return CUDA_SUCCESS;
}

CUresult cuCtxSetLimit(CUlimit limit, size_t value) {
  if ((unsigned)limit >= CU_LIMIT_MAX)
    return CUDA_ERROR_INVALID_VALUE;
  limits[limit] = value;
  return CUDA_SUCCESS;
}

/* -- modules and functions ------------------------------------------------------------ */
CUresult cuModuleLoadData(CUmodule *module, const void *image) {
  if (!image)
    return CUDA_ERROR_INVALID_VALUE;
  struct stub_module *loaded = calloc(1, sizeof *loaded);
  if (!loaded)
    return CUDA_ERROR_OUT_OF_MEMORY;
  loaded->function.num_regs = 32;
  *module = (CUmodule)loaded;
  return CUDA_SUCCESS;
}

CUresult cuModuleUnload(CUmodule module) {
  free(module);
  return CUDA_SUCCESS;
}

/* Each module's one kernel: Triton loads one kernel per module. */
CUresult cuModuleGetFunction(CUfunction *function, CUmodule module, const char *name) {
  if (!module || !name)
    return CUDA_ERROR_INVALID_VALUE;
  *function = (CUfunction)&((struct stub_module *)module)->function;
  return CUDA_SUCCESS;
}

CUresult cuFuncGetAttribute(int *value, CUfunction_attribute attribute, CUfunction function) {
  switch (attribute) {
  case CU_FUNC_ATTRIBUTE_NUM_REGS: *value = ((struct stub_function *)function)->num_regs; break;
  case CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK: *value = 1024; break;
  case CU_FUNC_ATTRIBUTE_PTX_VERSION: *value = 90; break;
  case CU_FUNC_ATTRIBUTE_BINARY_VERSION: *value = 90; break;
  default: *value = 0; break; /* no spills, no static shared memory */
  }
  return CUDA_SUCCESS;
}

CUresult cuFuncSetAttribute(CUfunction function, CUfunction_attribute attribute, int value) {
  (void)function; (void)attribute; (void)value;
  return CUDA_SUCCESS;
}

CUresult cuFuncSetCacheConfig(CUfunction function, CUfunc_cache config) {
  (void)function; (void)config;
  return CUDA_SUCCESS;
}

CUresult cuOccupancyMaxActiveClusters(int *clusters, CUfunction function,
                                      const CUlaunchConfig *config) {
  (void)function; (void)config;
  *clusters = 132;
  return CUDA_SUCCESS;
}

/* -- launches ------------------------------------------------------------------------- */
CUresult cuLaunchKernelEx(const CUlaunchConfig *config, CUfunction function,
                          void **params, void **extra) {
  (void)extra;
  if (!config || !function)
    return CUDA_ERROR_INVALID_VALUE;
  launch_count++;
  if (recorded_params) {
    unsigned int dims[8] = {config->gridDimX, config->gridDimY, config->gridDimZ,
                            config->blockDimX, config->blockDimY, config->blockDimZ,
                            config->sharedMemBytes, config->numAttrs};
    memcpy(last_config, dims, sizeof dims);
    for (int i = 0; i < recorded_params; ++i)
      memcpy(&last_params[i], params[i], sizeof last_params[i]);
  }
  return CUDA_SUCCESS;
}

CUresult cuLaunchKernel(CUfunction function, unsigned int gridX, unsigned int gridY,
                        unsigned int gridZ, unsigned int blockX, unsigned int blockY,
                        unsigned int blockZ, unsigned int sharedBytes, CUstream stream,
                        void **params, void **extra) {
  (void)gridX; (void)gridY; (void)gridZ; (void)blockX; (void)blockY; (void)blockZ;
  (void)sharedBytes; (void)stream; (void)params; (void)extra;
  if (!function)
    return CUDA_ERROR_INVALID_VALUE;
  launch_count++;
  return CUDA_SUCCESS;
}

/* -- streams and pointers ------------------------------------------------------------- */
CUresult cuStreamIsCapturing(CUstream stream, CUstreamCaptureStatus *status) {
  (void)stream;
  *status = CU_STREAM_CAPTURE_STATUS_NONE;
  return CUDA_SUCCESS;
}

CUresult cuStreamSynchronize(CUstream stream) { (void)stream; return CUDA_SUCCESS; }

/* Every address is device memory of device 0 (the benchmark hands over host pointers of
 * torch CPU tensors, which the stub never dereferences). */
static CUresult pointer_attribute(void *data, CUpointer_attribute attribute, CUdeviceptr ptr) {
  switch (attribute) {
  case CU_POINTER_ATTRIBUTE_DEVICE_POINTER: *(CUdeviceptr *)data = ptr; break;
  case CU_POINTER_ATTRIBUTE_HOST_POINTER: *(void **)data = NULL; break;
  case CU_POINTER_ATTRIBUTE_MEMORY_TYPE: *(unsigned int *)data = CU_MEMORYTYPE_DEVICE; break;
  case CU_POINTER_ATTRIBUTE_CONTEXT: *(CUcontext *)data = (CUcontext)&primary_context; break;
  case CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL: *(int *)data = 0; break;
  case CU_POINTER_ATTRIBUTE_IS_MANAGED: *(unsigned int *)data = 0; break;
  default: return CUDA_ERROR_INVALID_VALUE;
  }
  return CUDA_SUCCESS;
}

CUresult cuPointerGetAttribute(void *data, CUpointer_attribute attribute, CUdeviceptr ptr) {
  pointer_query_count++;
  return pointer_attribute(data, attribute, ptr);
}

CUresult cuPointerGetAttributes(unsigned int count, CUpointer_attribute *attributes,
                                void **data, CUdeviceptr ptr) {
  pointer_query_count++;
  for (unsigned int i = 0; i < count; i++)
    if (data[i] && pointer_attribute(data[i], attributes[i], ptr) != CUDA_SUCCESS)
      return CUDA_ERROR_INVALID_VALUE;
  return CUDA_SUCCESS;
}

/* -- tensor maps (TMA descriptors): an all-zero descriptor ------------------------------ */
CUresult cuTensorMapEncodeTiled(CUtensorMap *map, CUtensorMapDataType type, cuuint32_t rank,
                                void *address, const cuuint64_t *dims,
                                const cuuint64_t *strides, const cuuint32_t *box,
                                const cuuint32_t *elementStrides,
                                CUtensorMapInterleave interleave, CUtensorMapSwizzle swizzle,
                                CUtensorMapL2promotion l2, CUtensorMapFloatOOBfill fill) {
  (void)type; (void)rank; (void)address; (void)dims; (void)strides; (void)box;
  (void)elementStrides; (void)interleave; (void)swizzle; (void)l2; (void)fill;
  memset(map, 0, sizeof *map);
  return CUDA_SUCCESS;
}

CUresult cuTensorMapEncodeIm2col(CUtensorMap *map, CUtensorMapDataType type, cuuint32_t rank,
                                 void *address, const cuuint64_t *dims,
                                 const cuuint64_t *strides, const int *lower,
                                 const int *upper, cuuint32_t channels, cuuint32_t pixels,
                                 const cuuint32_t *elementStrides,
                                 CUtensorMapInterleave interleave, CUtensorMapSwizzle swizzle,
                                 CUtensorMapL2promotion l2, CUtensorMapFloatOOBfill fill) {
  (void)type; (void)rank; (void)address; (void)dims; (void)strides; (void)lower; (void)upper;
  (void)channels; (void)pixels; (void)elementStrides; (void)interleave; (void)swizzle;
  (void)l2; (void)fill;
  memset(map, 0, sizeof *map);
  return CUDA_SUCCESS;
}

/* -- entry points by name (cuda.h maps cuGetProcAddress to cuGetProcAddress_v2) --------- */
static const struct { const char *name; void *fn; } entry_points[] = {
    {"cuInit", (void *)cuInit},
    {"cuDriverGetVersion", (void *)cuDriverGetVersion},
    {"cuGetErrorString", (void *)cuGetErrorString},
    {"cuGetErrorName", (void *)cuGetErrorName},
    {"cuDeviceGetCount", (void *)cuDeviceGetCount},
    {"cuDeviceGet", (void *)cuDeviceGet},
    {"cuDeviceGetName", (void *)cuDeviceGetName},
    {"cuDeviceGetAttribute", (void *)cuDeviceGetAttribute},
    {"cuDevicePrimaryCtxRetain", (void *)cuDevicePrimaryCtxRetain},
    {"cuDevicePrimaryCtxRelease", (void *)cuDevicePrimaryCtxRelease},
    {"cuCtxGetCurrent", (void *)cuCtxGetCurrent},
    {"cuCtxSetCurrent", (void *)cuCtxSetCurrent},
    {"cuCtxGetDevice", (void *)cuCtxGetDevice},
    {"cuCtxSynchronize", (void *)cuCtxSynchronize},
    {"cuCtxGetLimit", (void *)cuCtxGetLimit},
    {"cuCtxSetLimit", (void *)cuCtxSetLimit},
    {"cuModuleLoadData", (void *)cuModuleLoadData},
    {"cuModuleUnload", (void *)cuModuleUnload},
    {"cuModuleGetFunction", (void *)cuModuleGetFunction},
    {"cuFuncGetAttribute", (void *)cuFuncGetAttribute},
    {"cuFuncSetAttribute", (void *)cuFuncSetAttribute},
    {"cuFuncSetCacheConfig", (void *)cuFuncSetCacheConfig},
    {"cuOccupancyMaxActiveClusters", (void *)cuOccupancyMaxActiveClusters},
    {"cuLaunchKernelEx", (void *)cuLaunchKernelEx},
    {"cuLaunchKernel", (void *)cuLaunchKernel},
    {"cuStreamIsCapturing", (void *)cuStreamIsCapturing},
    {"cuStreamSynchronize", (void *)cuStreamSynchronize},
    {"cuPointerGetAttribute", (void *)cuPointerGetAttribute},
    {"cuPointerGetAttributes", (void *)cuPointerGetAttributes},
    {"cuTensorMapEncodeTiled", (void *)cuTensorMapEncodeTiled},
    {"cuTensorMapEncodeIm2col", (void *)cuTensorMapEncodeIm2col},
};

CUresult cuGetProcAddress(const char *symbol, void **fn, int version, cuuint64_t flags,
                          CUdriverProcAddressQueryResult *status) {
  (void)version; (void)flags;
  for (size_t i = 0; i < sizeof entry_points / sizeof entry_points[0]; i++) {
    if (strcmp(symbol, entry_points[i].name) == 0) {
      *fn = entry_points[i].fn;
      if (status)
        *status = CU_GET_PROC_ADDRESS_SUCCESS;
      return CUDA_SUCCESS;
    }
  }
  *fn = NULL;
  if (status)
    *status = CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
  return CUDA_ERROR_NOT_FOUND;
}
