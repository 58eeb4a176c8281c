//! Kubernetes resource quantities (`500m`, `2`, `64Mi`, `1e3`, `1.5G`) as the
//! numbers the runtime needs: millicores of CPU and bytes of memory.

/// A quantity's value scaled by `scale` (1000 for millicores, 1 for bytes),
/// rounded up as upstream rounds when converting; `None` if it is not a quantity.
pub fn parse_scaled(q: &str, scale: f64) -> Option<i64> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let number: f64 = number.parse().ok()?;
    let multiplier = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        e if e.starts_with(['e', 'E']) => 10f64.powi(e[1..].parse().ok()?),
        _ => return None,
    };
    let v = (number * multiplier * scale).ceil();
    (v.is_finite() && v >= 0.0 && v < i64::MAX as f64).then_some(v as i64)
}

/// CPU in millicores.
pub fn millicores(q: &str) -> Option<i64> {
    parse_scaled(q, 1000.0)
}

/// Memory (or storage) in bytes.
pub fn bytes(q: &str) -> Option<i64> {
    parse_scaled(q, 1.0)
}

/// A quantity in thousandths of its unit (millicores for CPU, milli-bytes for
/// memory, milli-objects for counts): one scale for adding up any resource.
pub fn milli(q: &str) -> Option<i64> {
    parse_scaled(q, 1000.0)
}

/// A sum of thousandths back as a quantity string: whole numbers plain (with a
/// binary suffix when exact, for memory-like sizes), the rest in `m`.
pub fn format_milli(v: i64) -> String {
    if v % 1000 != 0 {
        return format!("{v}m");
    }
    let whole = v / 1000;
    for (suffix, size) in [("Gi", 1i64 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)] {
        if whole >= size && whole % size == 0 {
            return format!("{}{suffix}", whole / size);
        }
    }
    whole.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milli_sums_round_trip() {
        assert_eq!(milli("1.5"), Some(1500));
        assert_eq!(format_milli(1500), "1500m");
        assert_eq!(format_milli(2000), "2");
        assert_eq!(format_milli(milli("128Mi").unwrap_or(0)), "128Mi");
        assert_eq!(format_milli(0), "0");
    }

    #[test]
    fn cpu_and_memory() {
        assert_eq!(millicores("500m"), Some(500));
        assert_eq!(millicores("2"), Some(2000));
        assert_eq!(millicores("0.1"), Some(100));
        assert_eq!(bytes("64Mi"), Some(64 * 1024 * 1024));
        assert_eq!(bytes("1G"), Some(1_000_000_000));
        assert_eq!(bytes("1e3"), Some(1000));
        assert_eq!(bytes("12Qi"), None);
        assert_eq!(bytes("-1"), None);
        assert_eq!(bytes(""), None);
    }
}
