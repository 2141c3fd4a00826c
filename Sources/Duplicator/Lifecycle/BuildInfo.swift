/// What this build is. The version is written here and nowhere else: the
/// CLI's `--version`, the metrics endpoint's `duplicator_build_info` and the
/// Makefile's `dist` tarball name (which reads this line) all take it from here.
public enum BuildInfo {
    public static let version = "0.1.0"
}
