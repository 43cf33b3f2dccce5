"""The device side from the host: bundles, signatures, ssh releases, a fleet, the emulated Pi."""
