//! The modes besides a session, one file each: `-m`, `-u`, `--list`.

pub mod list;
pub mod mount;
pub mod unmount;
