//! Recognising an image from its superblock.
