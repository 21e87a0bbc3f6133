//! A reproducible ext4 writer.
