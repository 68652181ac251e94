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

# The component a header (a path under include/ or backends/cpu/include/) belongs to.
function(component_of header result)
  if(header STREQUAL "dreambooth/io/json.hpp")  # the JSON config reader models/ and schedulers/ use: nlohmann only
    set(c core)
  elseif(header STREQUAL "dreambooth/io/png.hpp")  # libpng
    set(c data)
  elseif(header MATCHES "^dreambooth/(core|nn|models|schedulers)/" OR header MATCHES "^dreambooth/backends/cpu"
         OR header MATCHES "^dreambooth/[^/]+\\.hpp$")  # backend.hpp, device_dispatch.hpp, ...
    set(c core)
  elseif(header MATCHES "^dreambooth/(io|data|tokenizer)/")
    set(c ${CMAKE_MATCH_1})
  elseif(header MATCHES "^dreambooth/(pipeline|train)/")
    set(c train)
  elseif(header STREQUAL "dreambooth/backends/cuda.hpp")
    set(c cuda)
  else()
    set(c "")
  endif()
  set(${result} "${c}" PARENT_SCOPE)
endfunction()

# The component whose dependencies provide a third-party header; "system" for the C library and POSIX headers.
function(dependency_of header result)
  if(header MATCHES "^(Eigen/|nlohmann/)" OR header MATCHES "^(cblas|omp)\\.h$")
    set(c core)
  elseif(header MATCHES "^(yaml-cpp/|openssl/)" OR header STREQUAL "zlib.h")
    set(c io)
  elseif(header MATCHES "^(png|jpeglib|jerror)\\.h$")
    set(c data)
  elseif(header MATCHES "^unicode/")
    set(c tokenizer)
  elseif(header MATCHES "^(unistd|fcntl)\\.h$" OR header MATCHES "^sys/")
    set(c system)
  elseif(NOT header MATCHES "[./]")  # <vector>, <cmath>, ...
    set(c system)
  else()
    set(c "")
  endif()
  set(${result} "${c}" PARENT_SCOPE)
endfunction()

set(problems "")
set(count 0)
foreach(root IN ITEMS include backends/cpu/include)
  file(GLOB_RECURSE headers RELATIVE "${SOURCE_DIR}/${root}" "${SOURCE_DIR}/${root}/*.hpp")
  foreach(header IN LISTS headers)
    math(EXPR count "${count} + 1")
    component_of("${header}" component)
    if(component STREQUAL "" OR component STREQUAL "cuda")
      list(APPEND problems "${root}/${header}: in no component (add it to CMakeLists.txt's components and to this check)")
      continue()
    endif()
    file(STRINGS "${SOURCE_DIR}/${root}/${header}" includes REGEX "^[ \t]*#[ \t]*include[ \t]*[<\"]")
    foreach(line IN LISTS includes)
      string(REGEX REPLACE "^[ \t]*#[ \t]*include[ \t]*[<\"]([^>\"]+)[>\"].*$" "\\1" included "${line}")
      if(included MATCHES "^dreambooth/")
        component_of("${included}" needed)
        # device_dispatch.hpp includes the CUDA plugin's header only under DREAMBOOTH_WITH_CUDA, which a program
        # linking dreambooth::cuda defines.
        if(needed STREQUAL "cuda" AND header STREQUAL "dreambooth/device_dispatch.hpp")
          continue()
        endif()
        set(kind "component")
      else()
        dependency_of("${included}" needed)
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
