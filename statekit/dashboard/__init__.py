"""The live dashboard of ``statekit serve`` (issue 18)."""
