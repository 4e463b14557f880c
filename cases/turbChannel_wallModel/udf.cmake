# Builds this case's udf against the installed nekrs_ml (NekRS includes <case>/udf.cmake).
if(DEFINED ENV{NEKRS_ML_UDF_CMAKE})
  set(_nekrs_ml_udf_cmake "$ENV{NEKRS_ML_UDF_CMAKE}")
else()
  execute_process(COMMAND nekrs-ml config --udf-cmake
    OUTPUT_VARIABLE _nekrs_ml_udf_cmake OUTPUT_STRIP_TRAILING_WHITESPACE RESULT_VARIABLE _rc)
  if(NOT _rc EQUAL 0 OR NOT _nekrs_ml_udf_cmake)
    message(FATAL_ERROR "nekrs_ml: `nekrs-ml config --udf-cmake` failed; install nekrs_ml or "
      "set NEKRS_ML_UDF_CMAKE to the path it prints")
  endif()
endif()
include("${_nekrs_ml_udf_cmake}")
