// What NekRS generates as <case>/.cache/udf/udf.cpp: its headers, then the case .udf.
#include "udf.hpp"
#include "nrs.hpp"
#include "stub_channel.udf"
