"""Headless EGL rendering of AMASS motions into videos (the body models themselves are in body/)."""
