// Next.js settings for the example.
export default {
  // Compression would buffer the Server-Sent Events the page reads.
  compress: false,
  poweredByHeader: false,
  reactStrictMode: true,
  // The app lives inside the Go module; this directory is its root.
  turbopack: { root: import.meta.dirname },
  outputFileTracingRoot: import.meta.dirname,
  async headers() {
    return [
      {
        source: "/:path*",
        headers: [
          { key: "X-Frame-Options", value: "DENY" },
          { key: "X-Content-Type-Options", value: "nosniff" },
          { key: "Referrer-Policy", value: "no-referrer" },
        ],
      },
    ];
  },
};
