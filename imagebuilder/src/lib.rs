//! cartbuild: recipes to images.

pub mod ext4;
