# Installs the build tree into a scratch prefix, then configures, builds and runs tests/downstream against it.
# Arguments: SOURCE_BUILD_DIR, WORK_DIR, DOWNSTREAM_SOURCE.
file(REMOVE_RECURSE "${WORK_DIR}")
function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE result OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT result EQUAL 0)
    message(FATAL_ERROR "command failed (${result}): ${ARGN}\n${out}\n${err}")
  endif()
endfunction()
run(${CMAKE_COMMAND} --install "${SOURCE_BUILD_DIR}" --prefix "${WORK_DIR}/prefix")
run(${CMAKE_COMMAND} -S "${DOWNSTREAM_SOURCE}" -B "${WORK_DIR}/build" -DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix -DCMAKE_BUILD_TYPE=Release)
run(${CMAKE_COMMAND} --build "${WORK_DIR}/build")
run("${WORK_DIR}/build/downstream" "${WORK_DIR}/out.safetensors")
message(STATUS "downstream project built against ${WORK_DIR}/prefix and ran")
