// The stand-in NekRS executable: sets up the stand-in platform, mesh and fields, loads the
// case's libudf.so and calls its hooks in NekRS 25.x's order (src/bin/driver.cpp there):
//   UDF_Setup0 (if any) -> UDF_LoadKernels -> UDF_Setup -> UDF_ExecuteStep(t0, 0) ->
//   per step: tstep += 1, lastStep from the options (NUMBER TIMESTEPS / END TIME / STOP AT
//   ELAPSED TIME, re-read every step), the "solve" (the velocity of the new time), then
//   UDF_ExecuteStep(time, tstep) once per corrector iteration.
// The "solve" sets the analytic velocity (1 + t) * U0(x) with
//   U0 = (a (1 - y^2) + e z,  c x,  b (1 - y^2) + g y),
// a polynomial of degree 2 per direction, represented exactly by the order-2 elements.
// After the last step each rank runs the wall-model boundary function on its wall faces as
// NekRS's boundary kernel would in the next step (boundary_kernel.hpp: wall_model.okl compiled
// as C++, with the usrwrk field this program is built with, which must be the one
// UDF_LoadKernels defines).
// At the end each rank writes <out>/rank<R>.json: steps run, the options, the kernel properties
// UDF_LoadKernels set, per volume node its coordinates and usrwrk fields 0 and 1, and per wall
// face node the BC's traction in space with its surface weight.
//
// Usage, in the case directory:
//   nekrs_stub_run --setup CASE.par --out DIR [--steps N] [--dt DT] [--viscosity MU]
//                  [--density RHO] [--field a,c,e,b,g] [--correctors K] [--order N]
//                  [--option "KEY=VALUE"]... [--no-walls-on-rank R]... [--udf LIBUDF]
#include "boundary_kernel.hpp"
#include "nekrs_stub.hpp"
#include "udf.hpp"

#include <dlfcn.h>
#include <mpi.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <limits>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#ifndef NEKRS_STUB_UDF_LIBRARY
#define NEKRS_STUB_UDF_LIBRARY "libudf.so"
#endif

namespace {

struct Arguments {
  std::string setup, out, udf = NEKRS_STUB_UDF_LIBRARY;
  int steps = 10, correctors = 2, order = 2;
  double dt = 0.1, viscosity = 1e-3, density = 1.0;
  double field[5] = {1.0, 0.2, 0.1, 0.5, 0.3}; // a, c, e, b, g
  std::vector<std::pair<std::string, std::string>> options;
  std::vector<int> ranks_without_walls; // their y = +-1 faces carry no boundary ID
};

Arguments parse(int argc, char** argv) {
  Arguments args;
  for (int i = 1; i < argc; i += 2) {
    const std::string key = argv[i];
    if (i + 1 >= argc) throw std::invalid_argument(key + " needs a value");
    const std::string value = argv[i + 1];
    if (key == "--setup") args.setup = value;
    else if (key == "--out") args.out = value;
    else if (key == "--udf") args.udf = value;
    else if (key == "--steps") args.steps = std::stoi(value);
    else if (key == "--correctors") args.correctors = std::stoi(value);
    else if (key == "--order") args.order = std::stoi(value);
    else if (key == "--dt") args.dt = std::stod(value);
    else if (key == "--viscosity") args.viscosity = std::stod(value);
    else if (key == "--density") args.density = std::stod(value);
    else if (key == "--field") {
      std::istringstream list(value);
      std::string item;
      for (int k = 0; k < 5; ++k) {
        if (!std::getline(list, item, ',')) throw std::invalid_argument("--field needs a,c,e,b,g");
        args.field[k] = std::stod(item);
      }
    } else if (key == "--no-walls-on-rank") {
      args.ranks_without_walls.push_back(std::stoi(value));
    } else if (key == "--option") {
      const auto eq = value.find('=');
      if (eq == std::string::npos) throw std::invalid_argument("--option needs KEY=VALUE");
      args.options.emplace_back(value.substr(0, eq), value.substr(eq + 1));
    } else {
      throw std::invalid_argument("unknown argument " + key);
    }
  }
  if (args.setup.size() < 5 || args.setup.compare(args.setup.size() - 4, 4, ".par") != 0) {
    throw std::invalid_argument("--setup needs the case .par file");
  }
  if (args.out.empty()) throw std::invalid_argument("--out needs a directory");
  return args;
}

// The "fluid solve" of the stand-in: the analytic velocity at `time`.
void set_velocity(nrs_t* nrs, const double field[5], double time) {
  mesh_t* mesh = nrs->meshV;
  const dlong offset = nrs->fluid->fieldOffset;
  auto [x, y, z] = mesh->xyzHost();
  std::vector<dfloat> U(3 * static_cast<std::size_t>(offset), std::nan(""));
  const double a = field[0], c = field[1], e = field[2], b = field[3], g = field[4];
  const double scale = 1.0 + time;
  for (dlong i = 0; i < mesh->Nlocal; ++i) {
    U[i + 0 * offset] = scale * (a * (1 - y[i] * y[i]) + e * z[i]);
    U[i + 1 * offset] = scale * (c * x[i]);
    U[i + 2 * offset] = scale * (b * (1 - y[i] * y[i]) + g * y[i]);
  }
  nrs->fluid->o_U.copyFrom(U.data(), U.size());
}

template <typename Fn> Fn load(void* library, const char* name, bool required) {
  void* symbol = dlsym(library, name);
  if (!symbol && required) throw std::runtime_error(std::string("libudf: no ") + name);
  return reinterpret_cast<Fn>(symbol);
}

std::string number(double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "Infinity" : "-Infinity";
  std::ostringstream text;
  text << std::setprecision(17) << value;
  return text.str();
}

std::string quoted(const std::string& text) {
  std::string out = "\"";
  for (char ch : text) {
    if (ch == '"' || ch == '\\') out += '\\';
    out += ch;
  }
  return out + "\"";
}

std::string array(const std::vector<double>& values) {
  std::string out = "[";
  for (std::size_t i = 0; i < values.size(); ++i) out += (i ? "," : "") + number(values[i]);
  return out + "]";
}

// What UDF_LoadKernels put into the kernel properties: defines and OKL include paths.
std::string kernel_properties(occa::json& info) {
  std::string defines = "{";
  if (info.has("defines")) {
    for (const char* name : {"NEKRS_ML_NEKRS_VERSION", "NEKRS_ML_USRWRK_FIELD"}) {
      if (!info.at("defines").has(name)) continue;
      if (defines.size() > 1) defines += ",";
      defines += quoted(name) + ":" + quoted(info.at("defines").at(name).text());
    }
  }
  defines += "}";
  std::string paths = "[";
  if (info.has("okl") && info.at("okl").has("include_paths")) {
    for (const auto& item : info.at("okl").at("include_paths").items()) {
      paths += (paths.size() > 1 ? "," : "") + quoted(item.text());
    }
  }
  paths += "]";
  return "\"kernel_defines\":" + defines + ",\"okl_include_paths\":" + paths;
}

// usrwrk field `field` of the volume nodes (NaN where usrwrk is too short).
std::vector<double> usrwrk_field(const std::vector<dfloat>& work, const mesh_t* mesh, dlong offset,
                                 int field) {
  std::vector<double> values(mesh->Nlocal, std::nan(""));
  for (dlong i = 0; i < mesh->Nlocal; ++i) {
    const std::size_t at = static_cast<std::size_t>(field) * offset + i;
    if (at < work.size()) values[i] = work[at];
  }
  return values;
}

// "wall_bc": per wall face node its position, the BC's traction and its surface weight.
std::string wall_bc(const std::vector<nekrs_stub::WallTraction>& nodes) {
  std::vector<double> columns[7];
  for (const auto& node : nodes) {
    for (int d = 0; d < 3; ++d) {
      columns[d].push_back(node.position[d]);
      columns[3 + d].push_back(node.traction[d]);
    }
    columns[6].push_back(node.weight);
  }
  const char* names[7] = {"x", "y", "z", "tx", "ty", "tz", "weight"};
  std::string out = "\"wall_bc\":{";
  for (int c = 0; c < 7; ++c) out += (c ? "," : "") + quoted(names[c]) + ":" + array(columns[c]);
  return out + "}";
}

void write_result(const Arguments& args, nrs_t* nrs, int rank, int size, int last_step,
                  double time, const std::string& kernels,
                  const std::vector<nekrs_stub::WallTraction>& tractions) {
  mesh_t* mesh = nrs->meshV;
  auto [x, y, z] = mesh->xyzHost();
  deviceMemory<dfloat>& usrwrk = nrs->bc->o_usrwrk;
  std::vector<dfloat> work(usrwrk.size());
  if (!work.empty()) usrwrk.copyTo(work);
  const dlong offset = nrs->fluid->fieldOffset;

  std::ofstream out(args.out + "/rank" + std::to_string(rank) + ".json");
  out << "{\"rank\":" << rank << ",\"size\":" << size << ",\"last_step\":" << last_step
      << ",\"time\":" << number(time) << ",\"number_timesteps\":"
      << quoted(platform->options.getArgs("NUMBER TIMESTEPS"))
      << ",\"end_time\":" << quoted(platform->options.getArgs("END TIME"))
      << ",\"field_offset\":" << offset << ",\"nlocal\":" << mesh->Nlocal
      << ",\"usrwrk_size\":" << work.size() << "," << kernels << ",\"x\":"
      << array(std::vector<double>(x.begin(), x.end()))
      << ",\"y\":" << array(std::vector<double>(y.begin(), y.end()))
      << ",\"z\":" << array(std::vector<double>(z.begin(), z.end()))
      << ",\"usrwrk0\":" << array(usrwrk_field(work, mesh, offset, 0))
      << ",\"usrwrk1\":" << array(usrwrk_field(work, mesh, offset, 1)) << ","
      << wall_bc(tractions) << "}\n";
  if (!out) throw std::runtime_error("cannot write the result into " + args.out);
}

// The BC function of this program reads the usrwrk field it was built with: the one the udf
// must have handed to its kernels.
void check_kernel_field(occa::json& info) {
  const std::string built = std::to_string(NEKRS_ML_USRWRK_FIELD);
  if (!info.has("defines") || !info.at("defines").has("NEKRS_ML_USRWRK_FIELD") ||
      info.at("defines").at("NEKRS_ML_USRWRK_FIELD").text() != built) {
    throw std::runtime_error("UDF_LoadKernels did not define NEKRS_ML_USRWRK_FIELD = " + built +
                             ", the field the stand-in boundary kernel is built with");
  }
}

int run(int argc, char** argv) {
  const Arguments args = parse(argc, argv);
  MPI_Comm comm;
  MPI_Comm_dup(MPI_COMM_WORLD, &comm);
  int rank = 0, size = 1;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &size);

  // the options NekRS derives from the .par
  static setupAide options;
  // NekRS runs in the case directory; CASENAME is the .par's stem
  const std::string par_name = args.setup.substr(args.setup.find_last_of('/') + 1);
  options.setArgs("CASENAME", par_name.substr(0, par_name.size() - 4));
  options.setArgs("NUMBER TIMESTEPS", std::to_string(args.steps));
  options.setArgs("FLUID VISCOSITY", number(args.viscosity));
  options.setArgs("FLUID DENSITY", number(args.density));
  for (const auto& [key, value] : args.options) options.setArgs(key, value);
  platform = new platform_t(options, comm, comm);

  nekrs_stub::BoxSpec spec;
  spec.order = args.order;
  for (int r : args.ranks_without_walls) {
    if (r == rank) spec.wall_id = -1; // a rank whose part of the mesh touches no wall
  }
  mesh_t* mesh = nekrs_stub::build_box(spec, rank);
  nrs_t* nrs = nekrs_stub::build_nrs(mesh);
  platform->app = nrs;

  void* library = dlopen(args.udf.c_str(), RTLD_NOW | RTLD_GLOBAL);
  if (!library) throw std::runtime_error(std::string("cannot load the udf: ") + dlerror());
  using setup0_t = void (*)(MPI_Comm, setupAide&);
  using load_kernels_t = void (*)(deviceKernelProperties&);
  using setup_t = void (*)();
  using execute_step_t = void (*)(double, int);
  auto udf_setup0 = load<setup0_t>(library, "UDF_Setup0", false);
  auto udf_load_kernels = load<load_kernels_t>(library, "UDF_LoadKernels", false);
  auto udf_setup = load<setup_t>(library, "UDF_Setup", true);
  auto udf_execute_step = load<execute_step_t>(library, "UDF_ExecuteStep", true);

  if (udf_setup0) udf_setup0(comm, options);
  deviceKernelProperties kernelInfo{occa::json()};
  if (udf_load_kernels) udf_load_kernels(kernelInfo);
  const std::string kernels = kernel_properties(kernelInfo);
  if (udf_load_kernels) check_kernel_field(kernelInfo);

  double time = 0.0;
  set_velocity(nrs, args.field, time); // initial condition
  udf_setup();

  int tstep = 0;
  nrs->lastStep = 0;
  udf_execute_step(time, tstep);
  int numSteps = -1;
  options.getArgs("NUMBER TIMESTEPS", numSteps);
  int last = numSteps > tstep ? 0 : 1;
  const double start = MPI_Wtime();
  while (!last) {
    ++tstep;
    const double timeNew = time + args.dt;
    double elapsed = MPI_Wtime() - start;
    MPI_Bcast(&elapsed, 1, MPI_DOUBLE, 0, comm); // every rank decides alike
    last = nrs->setLastStep(timeNew, tstep, elapsed);
    set_velocity(nrs, args.field, timeNew);
    for (int corrector = 0; corrector < args.correctors; ++corrector) {
      udf_execute_step(timeNew, tstep);
    }
    time = timeNew;
    if (tstep > 100000) throw std::runtime_error("no last step after 100000 steps");
  }
  // the next step's boundary kernel on this rank's walls (none on a rank without walls)
  const auto tractions = spec.wall_id > 0 ? nekrs_stub::wall_tractions(nrs, spec.wall_id, time)
                                          : std::vector<nekrs_stub::WallTraction>{};
  write_result(args, nrs, rank, size, tstep, time, kernels, tractions);
  if (rank == 0) std::cout << "nekrs_stub: ran to step " << tstep << std::endl;
  return 0;
}

} // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rc = 0;
  try {
    rc = run(argc, argv);
  } catch (const std::exception& error) {
    std::cerr << "nekrs_stub: error: " << error.what() << std::endl;
    MPI_Abort(MPI_COMM_WORLD, 2);
  }
  MPI_Finalize();
  return rc;
}
