"""Suites -> runs -> records -> tables. Tables are pure functions of the records."""
