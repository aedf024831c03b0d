/// Who may use the admin console (the virtual database `pgbouncer`) and with which rights.
public enum AdminRole: Sendable, Equatable {
    /// Every command (`admin_users`, or the daemon's own OS user as `pgbouncer` over the Unix socket).
    case admin
    /// SHOW only (`stats_users`, or anyone under `auth_type = any`).
    case stats
}

public enum AdminAccess {
    /// The console's name for itself, as a database and as the special user.
    public static let databaseName = "pgbouncer"

    /// The role `user` gets on the console, decided before any password is asked (as PgBouncer does);
    /// nil means PgBouncer's `not allowed`.
    public static func role(for user: String, settings: Settings) -> AdminRole? {
        if settings.adminUsers.contains(user) { return .admin }
        if settings.statsUsers.contains(user) { return .stats }
        // auth_type = any lets every name in, but only as a stats user.
        return settings.authType == .any ? .stats : nil
    }

    public static let notAllowed = PoolerError("not allowed")
    public static let adminAccessNeeded = PoolerError("admin access needed")
}
