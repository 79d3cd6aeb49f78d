// The Python extension module fastlayernorm._C. Importing it loads this
// shared library, whose static initializers register the operators. It has no
// Python functions of its own, so it builds against the limited Python API
// and one wheel serves every Python version.
#include <Python.h>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", "fastlayernorm operator library", -1, nullptr,
  };
  return PyModule_Create(&module_def);
}
}
