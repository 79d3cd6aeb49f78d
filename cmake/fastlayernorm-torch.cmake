# Settings that let find_package(Torch) work with a CUDA build of LibTorch
# (the pip wheel's torch, or a CUDA LibTorch download). Used by fastlayernorm's
# own CMakeLists.txt and by its installed package config.
#
# A CUDA LibTorch's config (Caffe2/public/cuda.cmake) always looks for the CUDA
# toolkit, even in a project that compiles no CUDA code: it needs nvcc (found
# through CUDA_TOOLKIT_ROOT_DIR, CUDA_PATH, PATH or /usr/local/cuda) and fails
# without it. It also ignores CMAKE_CUDA_ARCHITECTURES (warning "pytorch is not
# compatible with `CMAKE_CUDA_ARCHITECTURES`") and derives nvcc gencode flags
# from TORCH_CUDA_ARCH_LIST, probing the local GPUs when that is not set.

# Called before find_package(Torch), in the caller's scope.
macro(fastlayernorm_prepare_torch_cuda)
  # Architectures for torch's gencode flags; the default skips the GPU probe.
  if(NOT DEFINED TORCH_CUDA_ARCH_LIST AND NOT DEFINED ENV{TORCH_CUDA_ARCH_LIST})
    set(TORCH_CUDA_ARCH_LIST "8.0;9.0")
  endif()
  # Point torch's FindCUDA at the toolkit of the CUDA compiler CMake uses, so
  # the two agree (torch fails on "two conflicting CUDA versions" otherwise).
  if(NOT DEFINED CUDA_TOOLKIT_ROOT_DIR)
    if(CMAKE_CUDA_COMPILER AND EXISTS "${CMAKE_CUDA_COMPILER}")
      get_filename_component(_fln_cuda_bin "${CMAKE_CUDA_COMPILER}" DIRECTORY)
      get_filename_component(CUDA_TOOLKIT_ROOT_DIR "${_fln_cuda_bin}" DIRECTORY)
      unset(_fln_cuda_bin)
    elseif(DEFINED ENV{CUDA_HOME} AND EXISTS "$ENV{CUDA_HOME}/bin/nvcc")
      set(CUDA_TOOLKIT_ROOT_DIR "$ENV{CUDA_HOME}")
    endif()
  endif()
endmacro()
