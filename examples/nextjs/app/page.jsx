// The page: a Server Component that renders the migration panel. The data
// root comes from the server's environment, so the form can suggest a
// target the supervisor will accept.
import Migration from "./migration.jsx";

export const dynamic = "force-dynamic";

export default function Page() {
  const dataRoot = (process.env.MEMVISOR_DATA_ROOT || "/var/lib/memvisor/data").replace(/\/+$/, "");
  return (
    <main>
      <h1>memvisor</h1>
      <p className="lede">
        Start a migration from the synthetic source into a JSON Lines file, and follow it live. The
        browser talks only to this app; the app holds the supervisor&apos;s token.
      </p>
      <Migration dataRoot={dataRoot} />
    </main>
  );
}
