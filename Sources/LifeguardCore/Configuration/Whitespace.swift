extension StringProtocol {
    /// The text without leading and trailing spaces and tabs (every Unicode space separator), as the ini
    /// format treats them; line breaks never reach here.
    func trimmingWhitespace() -> String {
        func isBlank(_ scalar: Unicode.Scalar) -> Bool {
            scalar == "\t" || scalar.properties.generalCategory == .spaceSeparator
        }
        var scalars = Substring(self).unicodeScalars
        while let first = scalars.first, isBlank(first) { scalars.removeFirst() }
        while let last = scalars.last, isBlank(last) { scalars.removeLast() }
        return String(scalars)
    }
}
