"""Node conformance cases that are known to fail on the CPU provider, each with its reason."""

EXPECTED_FAILURES: dict[str, str] = {
}
