//! cartbuild: recipes to images.
