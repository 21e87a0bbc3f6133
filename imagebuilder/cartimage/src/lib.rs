//! The crashcart image as a thing on disk.
