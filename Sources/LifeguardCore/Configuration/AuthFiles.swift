/// The files read besides the ini at start and at each RELOAD: `auth_file`, and with `auth_type = hba`
/// `auth_hba_file` and `auth_ident_file`.
public struct AuthFiles: Sendable, Equatable {
    public var userList = UserList()
    public var access = HostBasedAccess()
    public var identMaps = IdentMaps()

    public init(userList: UserList = UserList()) {
        self.userList = userList
    }

    /// A broken auth_file fails the load (and so the start or RELOAD). The HBA files do not, as in PgBouncer:
    /// an unreadable rules file leaves no rule, so every login is rejected, and `warn` says why.
    public static func load(_ settings: Settings, warn: (String) -> Void) throws -> AuthFiles {
        var files = AuthFiles(userList: try settings.authFile.map { try UserList.load(path: $0) } ?? UserList())
        guard settings.authType == .hba else { return files }
        if let path = settings.authHBAFile {
            do {
                let text = try Configuration.readFile(path, reportedAs: path)
                files.access = HostBasedAccess(
                    parsing: text, file: path, readInclude: { try Configuration.readFile($0, reportedAs: $0) }, warn: warn)
            } catch {
                warn("\(error); auth_type = hba rejects every login until it can be read")
            }
        } else {
            warn("auth_type = hba without auth_hba_file rejects every login")
        }
        if let path = settings.authIdentFile {
            do {
                files.identMaps = IdentMaps(parsing: try Configuration.readFile(path, reportedAs: path), file: path, warn: warn)
            } catch {
                warn("\(error); no ident map applies until it can be read")
            }
        }
        return files
    }
}
