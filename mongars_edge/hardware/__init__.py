"""Hardware probe (facts from /proc, /sys, /etc) and the tuning profile derived from it."""

from mongars_edge.hardware.probe import HardwareFacts, ThermalZone, probe
from mongars_edge.hardware.tuning import TIERS, Choice, TuningProfile, profile_for

__all__ = [
    "TIERS",
    "Choice",
    "HardwareFacts",
    "ThermalZone",
    "TuningProfile",
    "probe",
    "profile_for",
]
