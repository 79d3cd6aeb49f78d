"""Samples an NVIDIA GPU's SM clock, power, temperature and clock-event (throttle) reasons
through NVML while a timing runs, from a background thread. NVML is reached with ctypes
(libnvidia-ml.so.1 ships with the driver), so no Python package is needed; where it cannot be
loaded the monitor records nothing.

    with GpuMonitor(index) as mon:
        ms = bench(...)
    mon.summary()  # {'sm_mhz_min': ..., 'sm_mhz_mean': ..., 'power_w_max': ..., ...}
"""
from __future__ import annotations

import ctypes
import threading
import time
from typing import Dict, Optional

_NVML_CLOCK_SM = 1
_NVML_TEMPERATURE_GPU = 0
_lib = None
_lib_failed = False


def _nvml():
    """The initialized NVML library, or None."""
    global _lib, _lib_failed
    if _lib is None and not _lib_failed:
        try:
            lib = ctypes.CDLL("libnvidia-ml.so.1")
            if lib.nvmlInit_v2() != 0:
                raise OSError("nvmlInit_v2 failed")
            _lib = lib
        except (OSError, AttributeError):
            _lib_failed = True
    return _lib


class GpuMonitor:
    """Polls GPU `index` (NVML's numbering; the CUDA index on a machine whose devices are
    all visible) every `period_s` seconds between __enter__ and __exit__."""

    def __init__(self, index: int, period_s: float = 0.01):
        self.period_s = period_s
        self.samples = []  # (sm_mhz, power_w, temp_c)
        self.reasons = 0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._handle = None
        self._get_reasons = None
        lib = _nvml()
        if lib is not None:
            handle = ctypes.c_void_p()
            if lib.nvmlDeviceGetHandleByIndex_v2(ctypes.c_uint(index), ctypes.byref(handle)) == 0:
                self._handle = handle
            # (Named "throttle reasons" before NVML 12.2.)
            for name in ("nvmlDeviceGetCurrentClocksEventReasons",
                         "nvmlDeviceGetCurrentClocksThrottleReasons"):
                self._get_reasons = getattr(lib, name, None)
                if self._get_reasons is not None:
                    break

    def _sample(self) -> None:
        lib, h = _lib, self._handle
        clock, power, temp = ctypes.c_uint(), ctypes.c_uint(), ctypes.c_uint()
        reasons = ctypes.c_ulonglong()
        if lib.nvmlDeviceGetClockInfo(h, _NVML_CLOCK_SM, ctypes.byref(clock)) != 0:
            return
        lib.nvmlDeviceGetPowerUsage(h, ctypes.byref(power))  # milliwatts
        lib.nvmlDeviceGetTemperature(h, _NVML_TEMPERATURE_GPU, ctypes.byref(temp))
        if self._get_reasons is not None and self._get_reasons(h, ctypes.byref(reasons)) == 0:
            self.reasons |= reasons.value
        self.samples.append((clock.value, power.value / 1000.0, temp.value))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            time.sleep(self.period_s)

    def __enter__(self) -> "GpuMonitor":
        if self._handle is not None:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()

    def summary(self) -> Dict[str, float]:
        """SM clock (min, mean), power and temperature (max) over the samples, and the OR of
        the clock-event reasons NVML reported (bits: 0x1 idle, 0x4 sw power cap, 0x8 hw
        slowdown, 0x20 sw thermal, 0x40 hw thermal, 0x80 hw power brake); {} when nothing
        was sampled."""
        if not self.samples:
            return {}
        clocks = [s[0] for s in self.samples]
        return {
            "sm_mhz_min": min(clocks),
            "sm_mhz_mean": round(sum(clocks) / len(clocks), 1),
            "power_w_max": max(s[1] for s in self.samples),
            "temp_c_max": max(s[2] for s in self.samples),
            "clock_event_reasons": self.reasons,
            "samples": len(self.samples),
        }
