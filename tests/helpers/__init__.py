"""Helpers shared by the test files: run launchers, fault injection, fixture builders."""
