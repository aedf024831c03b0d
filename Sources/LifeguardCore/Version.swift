/// The version line `lifeguard --version` prints first and `SHOW VERSION` returns.
public enum LifeguardVersion {
    public static let number = "0.1.0"
    public static let line = "Lifeguard \(number)"
}
