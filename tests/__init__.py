"""Tests; a package so test modules can share helpers by import."""
