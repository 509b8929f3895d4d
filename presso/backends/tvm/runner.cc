// A minimal TVM Relax VM runner for a cross-compiled artifact (used under qemu-aarch64).
//
// usage: presso_tvm_runner MODEL.so OUT_DIR INPUT.bin:DTYPE:D0,D1,... [...]
// Writes OUT_DIR/out<i>.bin (raw bytes) and OUT_DIR/out<i>.txt ("DTYPE D0,D1,...").
// It links only TVM's runtime (libtvm_runtime.so, libtvm_ffi.so), never the compiler.
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/container/tensor.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

namespace ffi = tvm::ffi;
using ffi::Tensor;

// Host memory for input tensors (the VM allocates its own outputs).
struct HostAlloc {
  void AllocData(DLTensor* tensor) { tensor->data = std::aligned_alloc(64, (ffi::GetDataSize(*tensor) + 63) / 64 * 64); }
  void FreeData(DLTensor* tensor) { std::free(tensor->data); }
};

static std::vector<std::string> Split(const std::string& text, char sep) {
  std::vector<std::string> parts;
  std::stringstream stream(text);
  std::string item;
  while (std::getline(stream, item, sep)) parts.push_back(item);
  return parts;
}

static size_t ByteSize(const Tensor& tensor) {
  return static_cast<size_t>(tensor.numel()) * ((tensor.dtype().bits * tensor.dtype().lanes + 7) / 8);
}

static Tensor ReadInput(const std::string& spec) {
  std::vector<std::string> parts = Split(spec, ':');
  // A scalar has an empty SHAPE, which getline drops: then there are only two parts.
  if (parts.size() != 2 && parts.size() != 3) throw std::runtime_error("bad input spec (want FILE:DTYPE:SHAPE): " + spec);
  std::vector<int64_t> shape;
  if (parts.size() == 3)
    for (const std::string& d : Split(parts[2], ',')) shape.push_back(std::stoll(d));
  DLDataType dtype = ffi::StringToDLDataType(parts[1]);
  Tensor tensor = Tensor::FromNDAlloc(HostAlloc(), ffi::Shape(shape), dtype, DLDevice{kDLCPU, 0});
  std::ifstream file(parts[0], std::ios::binary);
  std::vector<char> bytes((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  size_t nbytes = ByteSize(tensor);
  if (bytes.size() != nbytes) throw std::runtime_error("input " + parts[0] + " has the wrong size for its shape");
  std::memcpy(tensor.data_ptr(), bytes.data(), nbytes);
  return tensor;
}

static void WriteOutput(const Tensor& tensor, const std::string& stem) {
  size_t nbytes = ByteSize(tensor);
  std::ofstream(stem + ".bin", std::ios::binary)
      .write(static_cast<const char*>(tensor.data_ptr()) + tensor.byte_offset(), nbytes);
  std::ofstream meta(stem + ".txt");
  meta << ffi::DLDataTypeToString(tensor.dtype()) << " ";
  for (int i = 0; i < tensor.ndim(); ++i) meta << (i ? "," : "") << tensor.size(i);
  meta << "\n";
}

int main(int argc, char** argv) {
  if (argc < 3) {
    std::cerr << "usage: " << argv[0] << " MODEL.so OUT_DIR INPUT.bin:DTYPE:SHAPE ...\n";
    return 2;
  }
  try {
    ffi::Module lib = ffi::Module::LoadFromFile(argv[1]);
    ffi::Module vm = lib->GetFunction("vm_load_executable").value()().cast<ffi::Module>();
    // (device type, device id, allocator) for the CPU; 2 = pooled allocator, as in Python.
    vm->GetFunction("vm_initialization").value()(static_cast<int>(kDLCPU), 0, 2);
    ffi::Function entry = vm->GetFunction("main").value();
    std::vector<ffi::Any> args;
    for (int i = 3; i < argc; ++i) args.push_back(ReadInput(argv[i]));
    std::vector<ffi::AnyView> views(args.begin(), args.end());
    ffi::Any result;
    entry.CallPacked(views.data(), static_cast<int>(views.size()), &result);
    std::string out_dir = argv[2];
    if (auto tensor = result.try_cast<Tensor>()) {
      WriteOutput(*tensor, out_dir + "/out0");
    } else {
      ffi::Array<ffi::Any> items = result.cast<ffi::Array<ffi::Any>>();
      for (size_t i = 0; i < items.size(); ++i) WriteOutput(items[i].cast<Tensor>(), out_dir + "/out" + std::to_string(i));
    }
  } catch (const std::exception& err) {
    std::cerr << "presso_tvm_runner: " << err.what() << "\n";
    return 1;
  }
  return 0;
}
