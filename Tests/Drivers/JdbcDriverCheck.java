// pgJDBC (Debian's libpostgresql-jdbc-java) through Lifeguard in transaction mode, with its default settings:
// PreparedStatements switch to named server-side statements after prepareThreshold (5) executions, and
// batches are pipelined. Backends are terminated between steps so statements certainly move between servers.
//
//   LIFEGUARD_JDBC_URL=jdbc:postgresql://127.0.0.1:6432/lgtest LIFEGUARD_USER=... LIFEGUARD_PASSWORD=... \
//   POSTGRES_SOCKET_DIR=... POSTGRES_PORT=... \
//   java -cp /usr/share/java/postgresql.jar Tests/Drivers/JdbcDriverCheck.java
//
// Prints one line per check; exits non-zero when any fails.
import java.sql.*;
import java.util.*;
import java.util.concurrent.*;

public class JdbcDriverCheck {
    static final String url = System.getenv("LIFEGUARD_JDBC_URL");
    static final String user = System.getenv("LIFEGUARD_USER");
    static final String password = System.getenv("LIFEGUARD_PASSWORD");
    static final List<String> failures = new ArrayList<>();

    interface Check { void run() throws Exception; }

    static void check(String name, Check check) {
        try {
            check.run();
            System.out.println("ok   " + name);
        } catch (Throwable error) {
            failures.add(name);
            System.out.println("FAIL " + name);
            error.printStackTrace(System.out);
        }
    }

    static Connection connect() throws SQLException {
        return DriverManager.getConnection(url, user, password);
    }

    /** Ends every backend Lifeguard holds for this user (psql as the superuser, over the Unix socket) and
     *  waits until they are gone, so Lifeguard has their FATAL and EOF before the next query. */
    static void terminateBackends() throws Exception {
        String mine = " FROM pg_stat_activity WHERE usename = '" + user + "' AND datname = 'lgtest'";
        superuserQuery("SELECT pg_terminate_backend(pid)" + mine);
        for (int attempt = 0; attempt < 100 && !superuserQuery("SELECT count(*)" + mine).equals("0"); attempt++) {
            Thread.sleep(50);
        }
        Thread.sleep(100);
    }

    static String superuserQuery(String sql) throws Exception {
        Process psql = new ProcessBuilder("psql", "-X", "-qAt", "-h", System.getenv("POSTGRES_SOCKET_DIR"),
            "-p", System.getenv("POSTGRES_PORT"), "-U", "postgres", "-d", "lgtest", "-c", sql)
            .redirectErrorStream(true).start();
        String output = new String(psql.getInputStream().readAllBytes()).trim();
        if (psql.waitFor() != 0) throw new IllegalStateException("psql failed: " + output);
        return output;
    }

    static void expect(boolean condition, String what) {
        if (!condition) throw new AssertionError(what);
    }

    public static void main(String[] args) throws Exception {
        check("PreparedStatement past prepareThreshold, on new servers", () -> {
            try (Connection connection = connect();
                 PreparedStatement statement = connection.prepareStatement("SELECT ?::int * 3")) {
                for (int round = 0; round < 3; round++) {
                    for (int value = 0; value < 10; value++) {
                        statement.setInt(1, value);
                        try (ResultSet rows = statement.executeQuery()) {
                            expect(rows.next() && rows.getInt(1) == value * 3, "value " + value);
                        }
                    }
                    terminateBackends();
                }
            }
        });

        check("batches and transactions with prepared statements", () -> {
            try (Connection connection = connect()) {
                connection.setAutoCommit(false);
                try (Statement ddl = connection.createStatement()) {
                    ddl.execute("CREATE TEMP TABLE jdbc_batch (v int) ON COMMIT DROP");
                }
                try (PreparedStatement insert = connection.prepareStatement("INSERT INTO jdbc_batch VALUES (?)")) {
                    for (int value = 0; value < 200; value++) {
                        insert.setInt(1, value);
                        insert.addBatch();
                    }
                    insert.executeBatch();
                }
                try (PreparedStatement sum = connection.prepareStatement("SELECT sum(v) FROM jdbc_batch");
                     ResultSet rows = sum.executeQuery()) {
                    expect(rows.next() && rows.getLong(1) == 19900, "sum of the batch");
                }
                connection.commit();
            }
        });

        check("eight threads with their own connections on a small pool", () -> {
            ExecutorService pool = Executors.newFixedThreadPool(8);
            List<Future<?>> work = new ArrayList<>();
            for (int thread = 0; thread < 8; thread++) {
                final int factor = thread;
                work.add(pool.submit(() -> {
                    try (Connection connection = connect();
                         PreparedStatement statement = connection.prepareStatement("SELECT ?::int * ?::int")) {
                        for (int value = 0; value < 30; value++) {
                            statement.setInt(1, value);
                            statement.setInt(2, factor);
                            try (ResultSet rows = statement.executeQuery()) {
                                expect(rows.next() && rows.getInt(1) == value * factor, "thread " + factor);
                            }
                        }
                    }
                    return null;
                }));
            }
            for (Future<?> result : work) result.get(60, TimeUnit.SECONDS);
            pool.shutdown();
        });

        if (!failures.isEmpty()) {
            System.out.println(failures.size() + " JDBC check(s) failed");
            System.exit(1);
        }
        System.out.println("all JDBC checks passed");
    }
}
