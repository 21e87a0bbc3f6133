//! The image manifest: what an image holds, written by cartbuild and read by cartinject.
