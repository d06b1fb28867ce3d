//! sysfs `uevent` files: `KEY=VALUE` lines.

use super::Lines;

/// Returns the value of `key` in a sysfs `uevent` file, or `None` if the key
/// is absent or its value empty. Lines without `=` are ignored; the first
/// occurrence of the key wins.
///
/// Used for `/sys/dev/block/MAJ:MIN/uevent` (keys `MAJOR`, `MINOR`,
/// `DEVNAME`, `DEVTYPE`, `PARTN`, `DISKSEQ`, ...).
pub fn uevent_value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    Lines::new(text)
        .filter_map(|(_, line)| line.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, value)| value)
        .filter(|value| !value.is_empty())
}

/// Returns `DEVNAME` from `/sys/dev/block/MAJ:MIN/uevent` (e.g. `sda`,
/// `nvme0n1`, `dm-0`), the name of the device node under `/dev`.
pub fn uevent_devname(text: &str) -> Option<&str> {
    uevent_value(text, "DEVNAME")
}

#[cfg(test)]
mod tests {
    use super::*;

    const VDA: &str = include_str!("../../tests/fixtures/sys-dev-block/254_0.uevent");
    const ZRAM: &str = include_str!("../../tests/fixtures/sys-dev-block/253_0.uevent");

    #[test]
    fn fixtures() {
        assert_eq!(uevent_devname(VDA), Some("vda"));
        assert_eq!(uevent_devname(ZRAM), Some("zram0"));
        assert_eq!(uevent_value(VDA, "MAJOR"), Some("254"));
        assert_eq!(uevent_value(VDA, "DEVTYPE"), Some("disk"));
        assert_eq!(uevent_value(VDA, "PARTN"), None);
    }

    #[test]
    fn edge_cases() {
        assert_eq!(uevent_devname(""), None);
        assert_eq!(uevent_devname("DEVNAME="), None);
        assert_eq!(uevent_devname("garbage\nDEVNAME=sda1"), Some("sda1"));
        assert_eq!(
            uevent_devname("XDEVNAME=a\nDEVNAME=b\nDEVNAME=c\n"),
            Some("b")
        );
        assert_eq!(uevent_devname("DEVNAME=mapper/x=y"), Some("mapper/x=y"));
    }
}
