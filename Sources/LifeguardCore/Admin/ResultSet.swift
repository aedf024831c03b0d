import NIOCore
import PostgresWire

/// A console reply table: RowDescription, DataRows and CommandComplete, in text format.
public struct ResultSet: Sendable {
    /// Column types PgBouncer's console uses, by its type letters.
    public enum ColumnType: Sendable {
        /// `s`: text.
        case text
        /// `i`: int4.
        case int4
        /// `q`: int8.
        case int8
        /// `N`: numeric (every statistics column).
        case numeric
        /// `T`: a time, sent as text `YYYY-MM-DD HH:MM:SS TZ`.
        case timestamp
        /// `b`: bytea.
        case bytea

        var oid: Int32 {
            switch self {
            case .text, .timestamp: return 25
            case .int4: return 23
            case .int8: return 20
            case .numeric: return 1700
            case .bytea: return 17
            }
        }

        var size: Int16 {
            switch self {
            case .int4: return 4
            case .int8: return 8
            case .text, .timestamp, .numeric, .bytea: return -1
            }
        }

        /// PgBouncer's type letter.
        public init?(letter: Character) {
            switch letter {
            case "s": self = .text
            case "i": self = .int4
            case "q": self = .int8
            case "N": self = .numeric
            case "T": self = .timestamp
            case "b": self = .bytea
            default: return nil
            }
        }
    }

    public var columns: [(name: String, type: ColumnType)]
    /// Each value already in its text form; nil is SQL NULL.
    public var rows: [[String?]] = []

    public init(columns: [(name: String, type: ColumnType)]) {
        self.columns = columns
    }

    /// Columns from parallel names and a PgBouncer type-letter string (`"ssii"`).
    public init(names: [String], types: String) {
        precondition(names.count == types.count, "one type letter per column")
        self.columns = zip(names, types).map { ($0, ColumnType(letter: $1)!) }
    }

    public mutating func append(_ row: [String?]) {
        precondition(row.count == columns.count, "one value per column")
        rows.append(row)
    }

    /// Writes the whole reply, ending with CommandComplete `tag` (no ReadyForQuery).
    public func write(into buffer: inout ByteBuffer, tag: String) {
        buffer.writeMessage(BackendID.rowDescription) {
            $0.writeInteger(Int16(columns.count))
            for column in columns {
                $0.writeNullTerminatedString(column.name)
                $0.writeInteger(Int32(0))  // table OID
                $0.writeInteger(Int16(0))  // column number
                $0.writeInteger(column.type.oid)
                $0.writeInteger(column.type.size)
                $0.writeInteger(Int32(-1))  // type modifier
                $0.writeInteger(Int16(0))  // text format
            }
        }
        for row in rows {
            buffer.writeMessage(BackendID.dataRow) {
                $0.writeInteger(Int16(row.count))
                for value in row {
                    if let value {
                        $0.writeInteger(Int32(value.utf8.count))
                        $0.writeString(value)
                    } else {
                        $0.writeInteger(Int32(-1))
                    }
                }
            }
        }
        buffer.writeCommandComplete(tag)
    }
}
