"""Tests of this part of eidetica."""
