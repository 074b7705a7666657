import "./globals.css";

export const metadata = {
  title: "memvisor migration",
  description: "Start a memvisor migration and watch it over Server-Sent Events.",
};

export default function RootLayout({ children }) {
  return (
    <html lang="en">
      <body>{children}</body>
    </html>
  );
}
