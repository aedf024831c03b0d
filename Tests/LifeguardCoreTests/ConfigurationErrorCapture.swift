import Testing

@testable import LifeguardCore

/// The ConfigurationError that `body` throws. Records an issue, and returns nil, when it throws nothing or
/// an error of another type.
func configurationError(_ body: () throws -> Void) -> ConfigurationError? {
    do {
        try body()
        Issue.record("expected a ConfigurationError")
        return nil
    } catch let error as ConfigurationError {
        return error
    } catch {
        Issue.record("unexpected error type: \(error)")
        return nil
    }
}
