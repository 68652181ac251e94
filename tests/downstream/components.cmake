# Checks that every header belongs to a component whose dependencies cover its #includes (the CMake components of
# CMakeLists.txt and cmake/dreamboothConfig.cmake.in): a header may include headers of its own component and of the
# components it builds on, and third-party headers of those components' dependencies only. Because every header's own
# includes are checked, what a header pulls in transitively is covered too.
# Arguments: SOURCE_DIR (the project's root).
cmake_minimum_required(VERSION 3.25)

# The components each component may use (itself included).
set(uses_core core)
set(uses_io core io)
set(uses_data core io data)
set(uses_tokenizer core tokenizer)
set(uses_train core io data tokenizer train)
set(uses_mpi core io data tokenizer train mpi)

# Rules as "component|regular expression", the first whose expression matches a path deciding.
# The component a header (a path under include/ or backends/cpu/include/) belongs to:
set(header_rules
    "core|^dreambooth/io/json\\.hpp$"  # the JSON config reader models/ and schedulers/ use: nlohmann only
    "data|^dreambooth/io/png\\.hpp$"  # libpng
    "core|^dreambooth/(core|nn|models|schedulers)/"
    "core|^dreambooth/backends/cpu"
    "core|^dreambooth/[^/]+\\.hpp$"  # backend.hpp, device_dispatch.hpp, ...
    "io|^dreambooth/io/"
    "data|^dreambooth/(data|eval)/"
    "tokenizer|^dreambooth/tokenizer/"
    "mpi|^dreambooth/train/mpi_communicator\\.hpp$"
    "train|^dreambooth/(pipeline|train)/"
    "cuda|^dreambooth/backends/cuda\\.hpp$")
# The component whose dependencies provide a third-party header; "system" for the C library and POSIX headers:
set(dependency_rules
    "core|^(Eigen/|unsupported/Eigen/|nlohmann/)"
    "core|^(cblas|omp)\\.h$"
    "core|^dnnl\\.hpp$"  # oneDNN, for the CPU backend's bf16 GEMMs when built with it
    "system|^(immintrin|cpuid)\\.h$"  # the compiler's x86 intrinsics and CPUID
    "io|^(yaml-cpp/|openssl/)"
    "io|^zlib\\.h$"
    "data|^(png|jpeglib|jerror)\\.h$"
    "tokenizer|^unicode/"
    "mpi|^mpi\\.h$"
    "system|^(unistd|fcntl)\\.h$"
    "system|^sys/"
    "system|^[^./]+$")  # <vector>, <cmath>, ...

# The component the first matching rule of the list `rules` names for `path`; empty when none matches.
function(first_match path rules result)
  foreach(rule IN LISTS ${rules})
    string(FIND "${rule}" "|" bar)
    string(SUBSTRING "${rule}" 0 ${bar} component)
    math(EXPR from "${bar} + 1")
    string(SUBSTRING "${rule}" ${from} -1 regex)
    if(path MATCHES "${regex}")
      set(${result} "${component}" PARENT_SCOPE)
      return()
    endif()
  endforeach()
  set(${result} "" PARENT_SCOPE)
endfunction()

set(problems "")
set(count 0)
foreach(root IN ITEMS include backends/cpu/include)
  file(GLOB_RECURSE headers RELATIVE "${SOURCE_DIR}/${root}" "${SOURCE_DIR}/${root}/*.hpp")
  foreach(header IN LISTS headers)
    math(EXPR count "${count} + 1")
    first_match("${header}" header_rules component)
    if(component STREQUAL "" OR component STREQUAL "cuda")
      list(APPEND problems "${root}/${header}: in no component (add it to CMakeLists.txt's components and to this check)")
      continue()
    endif()
    file(STRINGS "${SOURCE_DIR}/${root}/${header}" includes REGEX "^[ \t]*#[ \t]*include[ \t]*[<\"]")
    foreach(line IN LISTS includes)
      string(REGEX REPLACE "^[ \t]*#[ \t]*include[ \t]*[<\"]([^>\"]+)[>\"].*$" "\\1" included "${line}")
      if(included MATCHES "^dreambooth/")
        first_match("${included}" header_rules needed)
        # device_dispatch.hpp includes the CUDA plugin's header only under DREAMBOOTH_WITH_CUDA, which a program
        # linking dreambooth::cuda defines.
        if(needed STREQUAL "cuda" AND header STREQUAL "dreambooth/device_dispatch.hpp")
          continue()
        endif()
        set(kind "component")
      else()
        first_match("${included}" dependency_rules needed)
        if(needed STREQUAL "system")
          continue()
        endif()
        set(kind "dependency of the component")
      endif()
      if(needed STREQUAL "")
        list(APPEND problems "${root}/${header} (${component}): includes ${included}, which no component provides")
      elseif(NOT needed IN_LIST uses_${component})
        list(APPEND problems
          "${root}/${header} (${component}): includes ${included}, a ${kind} ${needed}, which ${component} does not use")
      endif()
    endforeach()
  endforeach()
endforeach()

if(count LESS 20)
  message(FATAL_ERROR "found only ${count} headers under ${SOURCE_DIR}: is SOURCE_DIR the project's root?")
endif()
if(problems)
  list(JOIN problems "\n  " text)
  message(FATAL_ERROR "headers outside their component's dependencies:\n  ${text}")
endif()
message(STATUS "${count} headers checked: each includes only its component's dependencies")
