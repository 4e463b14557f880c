# Case helper: links a NekRS case's `udf` target against nekrs_ml.
# In the case directory, a udf.cmake of one line does it:
#   include("$ENV{NEKRS_ML_UDF_CMAKE}")      # path printed by `nekrs-ml config --udf-cmake`
# or copy this file next to the case .par under the name udf.cmake.
if(NOT nekrs_ml_FOUND)
  set(_nekrs_ml_hint "$ENV{NEKRS_ML_CMAKE_DIR}")
  if(NOT _nekrs_ml_hint)
    execute_process(COMMAND nekrs-ml config --cmake-dir
      OUTPUT_VARIABLE _nekrs_ml_hint OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
  endif()
  find_package(nekrs_ml CONFIG REQUIRED HINTS "${CMAKE_CURRENT_LIST_DIR}" "${_nekrs_ml_hint}")
endif()
target_link_libraries(udf PRIVATE nekrs_ml::nekrsml)
